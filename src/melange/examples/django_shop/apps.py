"""The app's configuration."""

from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    """The shop: a view publishing orders, a command consuming them."""

    name = "melange.examples.django_shop"
    label = "melange_shop"
    verbose_name = "Melange shop example"
