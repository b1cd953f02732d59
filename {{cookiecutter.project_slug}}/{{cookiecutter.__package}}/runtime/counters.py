"""Task outcome counters and runtimes, kept in Redis by the process that ran the task; bin/metrics serves them.

Why not Celery's task events: a worker sends three event messages per task from its main process, the one that also
takes every message off the broker, and that costs throughput (`make bench`, README "Performance"). Here the pool
process adds one pipelined round trip to Redis after each task, and the counters are cluster-wide: every worker adds
to the same hash, any number of exporters read it, and nothing is missed while an exporter restarts.

One hash, key("metrics", "tasks"); each field is "<kind>\\t<task>\\t<queue>" with kind `succeeded`, `failed` (for good),
`retried`, `runtime_sum` (seconds, successful runs) or `le=<bucket>` (successful runs whose runtime fell in that
bucket and no lower one; the exporter adds them up into Prometheus' cumulative buckets). Counters only grow; Redis
losing them reads as a counter reset, which rate() and increase() handle.
"""

import logging
import time
from typing import cast

import redis

from .redis_store import client, key

logger = logging.getLogger(__name__)
KEY = key("metrics", "tasks")
# Seconds, up to the default hard time limit (300 s): the top buckets show tasks creeping towards it.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# Celery's final state of a run -> the counter it adds to. REJECTED and IGNORED runs are in the task log, not here.
KINDS = {"SUCCESS": "succeeded", "FAILURE": "failed", "RETRY": "retried"}
WARN_EVERY = 60.0  # seconds: while Redis is away, say so once a minute, not after every task
_warned_at = -WARN_EVERY


def bucket(seconds: float) -> str:
    """The label of the lowest bucket that holds `seconds` ("+Inf" above the last one)."""
    return next((str(bound) for bound in BUCKETS if seconds <= bound), "+Inf")


def field(kind: str, task: str, queue: str) -> str:
    return f"{kind}\t{task}\t{queue}"


def record(task: str, queue: str | None, state: str | None, runtime: float | None) -> None:
    """Count one finished run; task_log.py calls it from the task_postrun signal, which times every run already.

    `queue` is the one the message came from (None for apply(): counted as "eager"); `runtime` in seconds."""
    kind = KINDS.get(state or "")
    if kind is None:
        return
    queue = queue or "eager"
    try:
        pipe = client().pipeline(transaction=False)  # one round trip; the increments need no transaction
        pipe.hincrby(KEY, field(kind, task, queue), 1)
        if kind == "succeeded" and runtime is not None:
            pipe.hincrbyfloat(KEY, field("runtime_sum", task, queue), runtime)
            pipe.hincrby(KEY, field(f"le={bucket(runtime)}", task, queue), 1)
        pipe.execute()
    except redis.RedisError as exc:  # never fail or slow down the task for a metric: the task's own result stands
        global _warned_at
        if time.monotonic() - _warned_at >= WARN_EVERY:
            _warned_at = time.monotonic()
            reason = f"{type(exc).__name__}: {exc}"
            logger.warning("task counters not updated (%s); metrics undercount until Redis is back", reason)


def read() -> dict[tuple[str, str, str], float]:
    """Every counter: (kind, task, queue) -> value. Raises redis.RedisError when Redis is away."""
    counters: dict[tuple[str, str, str], float] = {}
    # cast: this client decodes replies (decode_responses=True), redis-py types every reply as bytes | str.
    for name, raw in cast("dict[str, str]", client().hgetall(KEY)).items():
        parts = name.split("\t")
        if len(parts) == 3:
            counters[(parts[0], parts[1], parts[2])] = float(raw)
    return counters
