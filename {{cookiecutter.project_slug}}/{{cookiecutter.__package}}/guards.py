"""Guards at the edges of a task: messages the worker refuses become dead letters, oversized payloads are stopped.

A worker refuses some messages before any task code runs: a task name no module registers, a serializer outside
`accept_content` (pickle would let anyone who can publish run code in the worker), a malformed message, a payload
over CELERY_MAX_PAYLOAD_BYTES. Celery logs these and drops them; the signal handlers below also record each one as a
dead letter (`python -m <package>.deadletters list`), and store a failure for its task id, so a caller waiting on
`.get()` hears about it at once instead of at its timeout.

The payload size is checked twice:

- when publishing, in `GuardedTask.apply_async` (every task derives from it through deadletters.DeadLetterTask): the
  caller gets PayloadTooLarge and nothing is sent. Not in a `before_task_publish` receiver: Celery catches and logs
  whatever a signal receiver raises (celery/utils/dispatch/signal.py), so such a check could not stop the message.
- in the worker, in `GuardedRequest`, for what bypasses `apply_async`: `send_task` by name, other producers.

A countdown/ETA beyond CELERY_MAX_COUNTDOWN is refused in `GuardedTask.apply_async` and `GuardedTask.retry`
(CountdownTooLong, nothing sent): the broker timeouts are sized from that limit (settings.py), and a task waiting
longer is redelivered while it waits and runs twice.

Imported by celery_app.py (which connects the handlers) and by deadletters.py (the task base class).
"""

import logging
from datetime import UTC, datetime
from typing import Any

from celery import Task, signals
from celery.exceptions import InvalidTaskError
from celery.utils.time import maybe_iso8601
from celery.worker.request import Request
from kombu.serialization import dumps

from .settings import settings

logger = logging.getLogger(__name__)


class PayloadTooLarge(InvalidTaskError):
    """A task message over CELERY_MAX_PAYLOAD_BYTES."""


def check_payload_size(task_name: str, size: int) -> None:
    if size > settings.max_payload_bytes:
        raise PayloadTooLarge(
            f"{task_name} message is {size} bytes, over the {settings.max_payload_bytes}-byte limit "
            "(CELERY_MAX_PAYLOAD_BYTES): pass a reference (an id, a URL) instead of the data"
        )


class CountdownTooLong(ValueError):
    """A countdown/ETA beyond CELERY_MAX_COUNTDOWN."""


def check_countdown(task_name: str, countdown: Any = None, eta: Any = None) -> None:
    """Refuse a countdown/ETA further ahead than CELERY_MAX_COUNTDOWN: the broker would redeliver it while it waits
    (the Redis visibility timeout is sized from the limit, settings.py) and the task would run twice."""
    if eta is not None:
        when = maybe_iso8601(eta) if isinstance(eta, str) else eta
        if when.tzinfo is None:  # Celery reads a naive ETA as UTC (enable_utc)
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    elif countdown is not None:
        seconds = float(countdown)
    else:
        return
    if seconds > settings.max_countdown:
        raise CountdownTooLong(
            f"{task_name} is scheduled {seconds:.0f}s ahead, over the {settings.max_countdown}s limit "
            "(CELERY_MAX_COUNTDOWN): schedule it with beat, or raise the limit (settings.py sizes the broker from it)"
        )


class GuardedRequest(Request):
    """The worker's view of one message; refuses an oversized one before it is handed to the pool."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        # An InvalidTaskError raised here takes Celery's own refusal path: ERROR log, message rejected, task_rejected.
        check_payload_size((message.headers or {}).get("task", "?"), len(message.body or b""))
        super().__init__(message, *args, **kwargs)


class GuardedTask(Task):
    # Celery's hook for a custom request class: https://docs.celeryq.dev/en/stable/userguide/tasks.html#requests-and-custom-requests
    Request = GuardedRequest

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        # Measured as it will be serialized; the headers kombu adds are not counted (a few hundred bytes).
        _, _, body = dumps((args or (), kwargs or {}), serializer=options.get("serializer") or self.serializer)
        check_payload_size(self.name, len(body))
        check_countdown(self.name, options.get("countdown"), options.get("eta"))
        return super().apply_async(args, kwargs, *rest, **options)

    def retry(self, *args: Any, countdown: Any = None, eta: Any = None, **options: Any) -> Any:
        # Checked before Celery's retry publishes: an error raised while it publishes becomes Reject(requeue=False),
        # which drops the message without a dead letter. Raised here, the task fails and is dead-lettered.
        check_countdown(self.name, countdown, eta)
        return super().retry(*args, countdown=countdown, eta=eta, **options)


def _dead_letter(message: Any, task_id: str, task_name: str, args: Any, kwargs: Any, reason: str) -> None:
    from . import deadletters  # here, not at the top: deadletters imports this module for GuardedTask

    queue = (message.delivery_info or {}).get("routing_key", "")
    deadletters.record(task_id, task_name, args, kwargs, reason, queue=queue)
    # One line naming the message; Celery's own ERROR record above it is several lines long.
    logger.error("refused %s[%s] from queue %r: %s; recorded as a dead letter", task_name, task_id, queue, reason)


@signals.task_rejected.connect
def record_rejected(sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    """A message refused before running: not a task message, a disallowed serializer, invalid, or too large."""
    headers = message.headers or {}  # None when the message is not a Celery task message at all
    task_id = headers.get("id") or f"no-id-{message.delivery_tag}"
    exc = exc or InvalidTaskError("not a Celery task message (no 'task' header)")
    # Arguments are not kept: they may be unreadable (pickle is not decoded here, ever) or the very problem (size).
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (arguments not kept)"
    _dead_letter(message, task_id, headers.get("task", "?"), [], {}, reason)
    if "id" in headers and sender is not None:
        # Celery stores nothing for a rejected message: without this a caller's .get() would wait for its timeout.
        sender.app.backend.mark_as_failure(task_id, exc)


@signals.task_unknown.connect
def record_unknown(sender: Any = None, message: Any = None, name: str = "?", **fields: Any) -> None:
    """A task name no imported module registers. Celery already stored NotRegistered as the task's result."""
    args: Any = []
    kwargs: Any = {}
    if len(message.body or b"") <= settings.max_payload_bytes:
        try:  # kept so the entry can be replayed once the worker that has the task is deployed
            args, kwargs, _embed = message.decode()
        except Exception:  # a disallowed serializer or a protocol 1 message: record it without its arguments
            args, kwargs = [], {}
    reason = f"NotRegistered: no task named {name!r} on this worker (deploy the module that defines it, then replay)"
    _dead_letter(message, fields.get("id", "?"), name, args, kwargs, reason)
