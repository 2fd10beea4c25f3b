"""Contenders: one module per broker, each class one library doing the same work."""
