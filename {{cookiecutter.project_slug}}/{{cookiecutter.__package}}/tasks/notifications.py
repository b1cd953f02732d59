"""Notifications: the idempotent-task pattern, because an email sent twice is a bug users see."""

from celery import Task

from .. import idempotency
from ..celery_app import app
from ..redis_store import client, key
from ..settings import settings


def deliver_receipt(order_id: str) -> None:
    """Stand-in for the email/API call: appends to an outbox list so tests can count deliveries."""
    client().rpush(key("outbox", "receipts"), order_id)


# ignore_result=False: the caller learns whether this delivery sent the receipt or skipped a repeat.
@app.task(bind=True, max_retries=10, ignore_result=False)
def send_receipt(self: Task, order_id: str) -> str:
    name = f"send_receipt:{order_id}"
    # The claim outlives the hard time limit, so it cannot expire while this delivery is still running.
    state = idempotency.claim(name, lock_ttl=settings.task_time_limit + 60)
    if state is idempotency.Claim.DONE:
        return "skipped: already sent"
    if state is idempotency.Claim.BUSY:
        raise self.retry(countdown=settings.task_time_limit // 4)
    try:
        deliver_receipt(order_id)
    except Exception:
        idempotency.release(name)
        raise
    idempotency.mark_done(name)
    return "sent"
