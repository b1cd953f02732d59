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
longer is redelivered while it waits and runs twice. A task class whose default_retry_delay or retry_backoff_max
exceeds it is refused when defined. The options of chain steps and callbacks are checked one level deep; what
bypasses `apply_async` (send_task by name, other producers, nested chords) is caught in the worker instead:
`GuardedRequest` refuses a message whose ETA is beyond the limit, and it becomes a dead letter (EtaTooFar).

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


class EtaTooFar(InvalidTaskError):
    """A message reaching a worker with an ETA beyond CELERY_MAX_COUNTDOWN (it bypassed GuardedTask.apply_async)."""


def seconds_ahead(eta: Any) -> float:
    when = maybe_iso8601(eta) if isinstance(eta, str) else eta
    if when.tzinfo is None:  # Celery reads a naive ETA as UTC (enable_utc)
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


def _refuse(task_name: str, seconds: float, error: type[Exception] = CountdownTooLong) -> None:
    raise error(
        f"{task_name} is scheduled {seconds:.0f}s ahead, over the {settings.max_countdown}s limit "
        "(CELERY_MAX_COUNTDOWN): schedule it with beat, or raise the limit (settings.py sizes the broker from it)"
    )


def check_countdown(task_name: str, countdown: Any = None, eta: Any = None) -> None:
    """Refuse a countdown/ETA further ahead than CELERY_MAX_COUNTDOWN: the broker would redeliver it while it waits
    (the Redis visibility timeout is sized from the limit, settings.py) and the task would run twice. Both are
    checked when both are given: Celery takes the message's ETA from the countdown and RabbitMQ's delay from the ETA."""
    for seconds in (
        float(countdown) if countdown is not None else None,
        seconds_ahead(eta) if eta is not None else None,
    ):
        if seconds is not None and seconds > settings.max_countdown:
            _refuse(task_name, seconds)


def round_up_short_delays(options: dict[str, Any]) -> None:
    """A delay under 1 s becomes 1 s. Native delayed delivery (RabbitMQ) routes by whole seconds and raises
    ValueError for 0 (kombu's calculate_routing_key(int(countdown))); inside retry() that error drops the message.
    An ETA less than 2 s ahead becomes a countdown of at least 1 s: Celery turns an ETA into a countdown a moment
    after this check, and one just over 1 s would be under it by then. Harmless on Redis: a second at most."""
    countdown, eta = options.get("countdown"), options.get("eta")
    if countdown is not None and 0 < float(countdown) < 1:
        options["countdown"] = 1
    if eta is not None:
        ahead = seconds_ahead(eta)
        if 0 < ahead < 2:
            options["eta"] = None
            if options.get("countdown") is None:
                options["countdown"] = max(1.0, ahead)


def _linked(options: dict[str, Any]) -> list[Any]:
    """The signatures published later from this message (chain steps, callbacks, errbacks), one level deep."""
    found: list[Any] = []
    for name in ("chain", "link", "link_error"):
        value = options.get(name) or []
        found.extend(value if isinstance(value, list | tuple) else [value])
    return found


# Seconds a message's ETA may exceed CELERY_MAX_COUNTDOWN when it reaches a worker: clock differences between hosts.
ETA_SLACK = 60


class GuardedRequest(Request):
    """The worker's view of one message; refuses an oversized one before it is handed to the pool."""

    def __init__(self, message: Any, *args: Any, **kwargs: Any) -> None:
        # An InvalidTaskError raised here takes Celery's own refusal path: ERROR log, message rejected, task_rejected
        # (recorded as a dead letter below).
        headers = message.headers or {}
        check_payload_size(headers.get("task", "?"), len(message.body or b""))
        # An ETA beyond the limit (send_task by name, another producer): the broker timeouts do not cover its wait.
        # ETA_SLACK allows for clocks that differ between hosts.
        if headers.get("eta") and seconds_ahead(headers["eta"]) > settings.max_countdown + ETA_SLACK:
            _refuse(headers.get("task", "?"), seconds_ahead(headers["eta"]), EtaTooFar)
        super().__init__(message, *args, **kwargs)


class GuardedTask(Task):
    # Celery's hook for a custom request class: https://docs.celeryq.dev/en/stable/userguide/tasks.html#requests-and-custom-requests
    Request = GuardedRequest

    # Celery's defaults (180 s, 600 s) kept within the limit, so a project with a short CELERY_MAX_COUNTDOWN still
    # imports; a task that sets a longer one is refused when it is defined (__init_subclass__).
    default_retry_delay = min(3 * 60, settings.max_countdown)
    retry_backoff_max = min(600, settings.max_countdown)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # @app.task builds a subclass of the base with the decorator's options as class attributes: checked here, a
        # delay no retry could use fails at import instead of in the worker, mid-retry.
        super().__init_subclass__(**kwargs)
        for attribute in ("default_retry_delay", "retry_backoff_max"):
            value = getattr(cls, attribute, None)
            if value is not None and value > settings.max_countdown:
                raise CountdownTooLong(
                    f"{cls.__module__}.{cls.__name__}: {attribute}={value} is over the {settings.max_countdown}s "
                    "limit (CELERY_MAX_COUNTDOWN): lower it, or raise the limit"
                )

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        # Measured as it will be serialized; the headers kombu adds are not counted (a few hundred bytes).
        _, _, body = dumps((args or (), kwargs or {}), serializer=options.get("serializer") or self.serializer)
        check_payload_size(self.name, len(body))
        check_countdown(self.name, options.get("countdown"), options.get("eta"))
        # Chain steps and callbacks are published later, by a worker: a delay in their options is checked now, while
        # the caller can still hear about it. Nested chords and groups are not looked into.
        for linked in _linked(options):
            if isinstance(linked, dict):
                step = linked.get("options") or {}
                check_countdown(linked.get("task", "?"), step.get("countdown"), step.get("eta"))
        round_up_short_delays(options)
        return super().apply_async(args, kwargs, *rest, **options)

    def retry(self, *args: Any, countdown: Any = None, eta: Any = None, **options: Any) -> Any:
        # Checked before Celery's retry publishes: an error raised while it publishes becomes Reject(requeue=False),
        # which drops the message without a dead letter. Raised here, the task fails and is dead-lettered. Celery
        # applies default_retry_delay when neither is given: applied here first, so it is checked too.
        if not eta and countdown is None:
            countdown = self.default_retry_delay
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
