"""Runnable examples: the payment service, the saga, and the documentation's snippets."""
