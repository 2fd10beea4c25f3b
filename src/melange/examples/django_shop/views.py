"""``POST /orders/`` publishes an order; ``GET /orders/<id>/`` tells its status."""

from __future__ import annotations

import json

from django.core.cache import cache
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from melange.examples.django_shop.messaging import orders_queue, publisher, status_key


# An API called by other services, not by a browser form: no CSRF token. (Django's decorators
# are untyped.)
@csrf_exempt  # type: ignore[untyped-decorator]
@require_POST  # type: ignore[untyped-decorator]
def place_order(request: HttpRequest) -> JsonResponse:
    """Publish the order in the request's JSON body; answer 202 with the message id."""
    try:
        body = json.loads(request.body)
        order_id, amount = int(body["order_id"]), float(body["amount"])
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": "expected {order_id: int, amount: number}"}, status=400)
    # Recorded before publishing: the consumer may confirm it before this view returns.
    cache.set(status_key(order_id), "received", timeout=None)
    message = publisher().publish(orders_queue(), {"order_id": order_id, "amount": amount})
    return JsonResponse({"message_id": message.message_id}, status=202)


@require_GET  # type: ignore[untyped-decorator]
def order_status(request: HttpRequest, order_id: int) -> JsonResponse:
    """The order's status: ``received``, then ``confirmed`` once consumed; 404 if unknown."""
    status = cache.get(status_key(order_id))
    if status is None:
        return JsonResponse({"error": f"no order {order_id}"}, status=404)
    return JsonResponse({"order_id": order_id, "status": status})
