"""Helpers the documentation's examples import."""
