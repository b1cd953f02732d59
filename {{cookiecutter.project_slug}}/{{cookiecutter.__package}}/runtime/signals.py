"""Signal handlers that turn messages a worker refuses into dead letters.

A worker refuses some messages before any task code runs: a task name no module registers, a serializer outside
`accept_content` (pickle would let anyone who can publish run code in the worker), a malformed message, a payload
over CELERY_MAX_PAYLOAD_BYTES (tasks/base.py). Celery logs these and drops them; the handlers below also record each
one as a dead letter (`ops deadletters list` shows them), and store a failure for its task id, so a caller waiting on
`.get()` hears about it at once instead of at its timeout.

Also `forgive_shutdown`: a deploy does not count towards the poison-message bound (tasks/base.py). Connected by
importing this module (celery_app.py does).
"""

import logging
from typing import Any

import redis
from celery import signals
from celery.exceptions import InvalidTaskError
from celery.worker import state as worker_state

from ..config.settings import settings
from ..tasks.base import WORKER_LOST_TTL, worker_lost_key
from . import deadletters, redis_store

logger = logging.getLogger(__name__)


def _dead_letter(message: Any, task_id: str, task_name: str, args: Any, kwargs: Any, reason: str) -> None:
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


@signals.worker_shutting_down.connect
def forgive_shutdown(**_: Any) -> None:
    """A deploy is not a poison message: the tasks running when this worker is told to stop may be cut off and put
    back (killed past the grace period), and their next start would count as a loss. Credit one in advance, so only
    pool processes that die on their own count; a task that finishes in time just leaves a counter that expires."""
    requests = list(worker_state.active_requests)  # the main process's view: the tasks its pool is running now
    if not requests:
        return
    try:
        # One round trip, bounded by the client's socket timeout.
        pipe = redis_store.client().pipeline(transaction=False)
        for request in requests:
            counter = worker_lost_key(request.id, request.request_dict.get("retries") or 0)
            pipe.decr(counter)
            pipe.expire(counter, WORKER_LOST_TTL)
        pipe.execute()
    except redis.RedisError as exc:  # Redis away: the tasks' next starts count as usual
        logger.warning("could not exempt %d running task(s) from the poison-message count: %s", len(requests), exc)
