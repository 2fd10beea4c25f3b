"""The shop's URLs: include them in the project's ``urlpatterns`` or use as ROOT_URLCONF."""

from __future__ import annotations

from django.urls import path

from melange.examples.django_shop import views

urlpatterns = [
    path("orders/", views.place_order, name="place-order"),
    path("orders/<int:order_id>/", views.order_status, name="order-status"),
]
