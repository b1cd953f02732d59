"""The base class of every task (the app's task_cls, celery_app.py): guards at the edges of a task, the
poison-message bound, and a dead letter (runtime/deadletters.py) for every final failure.

The payload size is checked twice:

- when publishing, in `GuardedTask.apply_async` (every task derives from it through DeadLetterTask, below): the
  caller gets PayloadTooLarge and nothing is sent. Not in a `before_task_publish` receiver: Celery catches and logs
  whatever a signal receiver raises (celery/utils/dispatch/signal.py), so such a check could not stop the message.
- in the worker, in `GuardedRequest`, for what bypasses `apply_async`: `send_task` by name, other producers.

A countdown/ETA beyond CELERY_MAX_COUNTDOWN is refused in `GuardedTask.apply_async` and `GuardedTask.retry`
(CountdownTooLong, nothing sent): the broker timeouts are sized from that limit (config/settings.py), and a task waiting
longer is redelivered while it waits and runs twice. A task class whose default_retry_delay or retry_backoff_max
exceeds it is refused when defined. The options of chain steps and callbacks are checked one level deep; what
bypasses `apply_async` (send_task by name, other producers, nested chords) is caught in the worker instead:
`GuardedRequest` refuses a message whose ETA is beyond the limit, and it becomes a dead letter (EtaTooFar; the
handlers in runtime/signals.py record what a worker refuses).
"""

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import redis
from celery import Task
from celery.exceptions import InvalidTaskError
from celery.utils.time import maybe_iso8601
from celery.worker.request import Request
from kombu.serialization import dumps

from ..config.settings import settings
from ..runtime import deadletters, errors, redis_store

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
    if when is None:  # an empty ETA string: no delay
        return 0.0
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


class GuardedTask(Task[Any, Any]):
    # Celery's hook for a custom request class: https://docs.celeryq.dev/en/stable/userguide/tasks.html#requests-and-custom-requests
    Request = GuardedRequest  # type: ignore[assignment]  # Celery takes a class or its dotted path; the stubs say str

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

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Any = None,
        throw: bool = True,
        eta: Any = None,
        countdown: Any = None,
        max_retries: Any = None,
        **options: Any,
    ) -> Any:
        # Checked before Celery's retry publishes: an error raised while it publishes becomes Reject(requeue=False),
        # which drops the message without a dead letter. Raised here, the task fails and is dead-lettered. Celery
        # applies default_retry_delay when neither is given: applied here first, so it is checked too.
        if not eta and countdown is None:
            countdown = self.default_retry_delay
        check_countdown(self.name, countdown, eta)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)


# How long a poison-message counter outlives its last increment: longer than any gap between two deliveries of one
# message (the Redis visibility timeout after a whole worker is lost), short enough to clean up after itself.
WORKER_LOST_TTL = max(86_400, 2 * (settings.visibility_timeout or 0))


class WorkerLost(Exception):
    """Raised instead of running a task whose pool process died CELERY_TASK_MAX_WORKER_LOST times in a row."""


def worker_lost_key(task_id: str, retries: int) -> str:
    # Per retry: a retry is a new message (same task id, retries + 1) that starts its own count.
    return redis_store.key("worker-lost", task_id, str(retries))


# GuardedTask (above): refuses oversized payloads and over-long countdowns when publishing and in the worker.
class DeadLetterTask(GuardedTask):
    """Base class of every task: bounds poison messages and records a final failure. Retries in progress are not
    failures yet."""

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """The poison-message bound. A pool process that dies mid-task (OOM kill, segfault) puts the message back
        (task_reject_on_worker_lost); a redelivered message that starts counts one loss, and once the count reaches
        CELERY_TASK_MAX_WORKER_LOST the task fails with WorkerLost instead of running: recorded as a dead letter,
        acknowledged (task_acks_on_failure), not redelivered. RabbitMQ's x-delivery-limit stays as the backstop.

        First deliveries cost nothing (no Redis call). A message put back without being started (prefetched by a
        worker that shut down) counts once when it next starts: the bound errs by one attempt at most. Tasks running
        when their worker is told to stop are credited one loss in advance (forgive_shutdown, runtime/signals.py):
        deploys do not count.
        """
        request = self.request
        if not (request.delivery_info or {}).get("redelivered"):
            return
        counter = worker_lost_key(task_id, request.retries or 0)
        try:
            pipe = redis_store.client().pipeline(transaction=False)  # one round trip
            pipe.incr(counter)
            pipe.expire(counter, WORKER_LOST_TTL)
            lost = pipe.execute()[0]
        except redis.RedisError as exc:  # Redis away: run the task rather than fail it for want of a counter
            logger.warning("poison-message counter not updated for %s[%s]: %s", self.name, task_id, exc)
            return
        if lost >= settings.task_max_worker_lost:
            raise WorkerLost(
                f"worker lost {lost} times running it (CELERY_TASK_MAX_WORKER_LOST={settings.task_max_worker_lost}): "
                "a poison message (out of memory? a crash in native code?), not run again"
            )

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        # The run ended (any outcome): the pool process was not lost, so the count starts over.
        if (self.request.delivery_info or {}).get("redelivered"):
            # Redis away: the counter expires by itself (WORKER_LOST_TTL).
            with contextlib.suppress(redis.RedisError):
                redis_store.client().delete(worker_lost_key(task_id, self.request.retries or 0))

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        queue = (self.request.delivery_info or {}).get("routing_key", "")
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        # One error event per dead letter, with its tags (runtime/errors.py), sent first: it also reaches
        # Sentry when Redis is down; nothing while retries are in progress.
        errors.report_final_failure(exc)
        deadletters.record(task_id, self.name, args, kwargs, reason, str(getattr(einfo, "traceback", "")), str(queue))
