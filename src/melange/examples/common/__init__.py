"""Pieces the examples share: the dataclass serializer, the payment command, service runtime."""
