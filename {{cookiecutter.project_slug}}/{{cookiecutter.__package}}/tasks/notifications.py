"""Notifications: the idempotent-task pattern, because an email sent twice is a bug users see."""

from typing import Any

from celery import Task

from ..celery_app import app
from ..runtime import idempotency
from ..runtime.redis_store import client, key


def deliver_receipt(order_id: str) -> None:
    """Stand-in for the email/API call: appends to an outbox list so tests can count deliveries."""
    client().rpush(key("outbox", "receipts"), order_id)


# ignore_result=False: the caller learns whether this delivery sent the receipt or skipped a repeat.
# max_retries: a delivery that finds the claim busy looks again every quarter of the claim's TTL; 10 tries outlast a
# claim left behind by a worker that died holding it.
@app.task(bind=True, max_retries=10, ignore_result=False)
def send_receipt(self: Task[Any, Any], order_id: str) -> str:
    # Claim, send, mark done (idempotency.py); the claim's TTL follows this task's own hard time limit.
    sent = idempotency.run_once(self, f"send_receipt:{order_id}", lambda: deliver_receipt(order_id))
    return "sent" if sent else "skipped: already sent"
