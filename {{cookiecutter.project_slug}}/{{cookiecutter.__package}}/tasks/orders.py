"""Order intake: validate the payload, then act on it."""

from typing import Any

from ..celery_app import app
from .payloads import Order, parse


# Stores its result (results are opt-in, celeryconfig.py): the web app's status endpoint returns it.
# A re-run (redelivery after a lost connection or worker) is harmless: it only validates and returns. Once it persists
# the order, write it as an upsert keyed by order_id (or use idempotency.run_once) so a re-run changes nothing.
@app.task(ignore_result=False)
def process_order(payload: dict[str, Any]) -> dict[str, str]:
    order = parse(Order, payload)  # bad input -> InvalidPayload -> dead letter, no retry
    # TODO: persist the order. Return JSON-friendly values: the Decimal goes out as a string.
    return {"order_id": order.order_id, "amount": str(order.amount), "currency": order.currency, "status": "accepted"}
