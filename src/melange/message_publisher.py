"""The publishers under the module name the original documentation uses."""

from melange.publishers import QueuePublisher, TopicPublisher

__all__ = ["QueuePublisher", "TopicPublisher"]
