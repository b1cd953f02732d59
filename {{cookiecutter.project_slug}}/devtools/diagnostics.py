"""Diagnostic tasks for fault drills (kill a worker, restart Redis) and the template's fault-injection tests."""

import json
import os
import signal
import time
from typing import Any

from celery import Task
from celery.utils.log import get_task_logger

from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.runtime import idempotency, redis_store

logger = get_task_logger(__name__)


def runs_key() -> str:
    """The Redis list record_run appends to: one JSON entry per execution."""
    return redis_store.key("diagnostics", "runs")


# Stores its result (results are opt-in, celeryconfig.py): smoke checks wait for it with .get().
@app.task(ignore_result=False)
def record_run(key: str, seconds: float = 0.0) -> str:
    """Sleep `seconds`, then append {"key", "pid", "at"} to runs_key(): one entry per execution.

    Idempotent by declaration: running it twice only adds a second entry, harmless, and exactly what a redelivery
    drill counts (two entries for one key = one duplicate delivery).
    """
    logger.info("record_run %s: running for %.1fs", key[:80], seconds)
    time.sleep(seconds)
    redis_store.client().rpush(runs_key(), json.dumps({"key": key, "pid": os.getpid(), "at": time.time()}))
    return key


# Stores its result: drills wait for it with .get().
@app.task(bind=True, ignore_result=False, max_retries=10)
def record_once(self: Task[Any, Any], key: str, seconds: float = 0.0) -> str:
    """record_run's idempotent twin: appends its entry to runs_key() once per key however often it is delivered,
    then works on for `seconds` (the window in which a lost connection leaves the message unacknowledged)."""

    def effect() -> None:
        # The effect ends at the side effect (idempotency.py): work after it stays outside, or a failure in that work
        # would give the claim back and a retry would record again.
        redis_store.client().rpush(runs_key(), json.dumps({"key": key, "pid": os.getpid(), "at": time.time()}))

    ran = idempotency.run_once(self, f"record_once:{key}", effect)
    if ran:
        logger.info("record_once %s: recorded, working on for %.1fs", key[:80], seconds)
        time.sleep(seconds)
    return "ran" if ran else "skipped: already ran"


# Not retried by Celery: every run is an attempt that the poison-message bound counts (tasks/base.py).
@app.task(bind=True)
def lose_worker(self: Task[Any, Any], key: str) -> None:
    """Record a run like record_run, then SIGKILL the pool process running it: an OOM kill or a segfault in a C
    extension, reproduced. The worker's main process lives on and replaces the pool process.

    For prefork workers only: under WORKER_POOL=solo or threads the pool process is the worker itself.
    """
    if self.request.is_eager or self.request.called_directly:
        raise RuntimeError("lose_worker kills the process running it; send it to a worker, never call it in-process")
    logger.warning("lose_worker %s: killing pool process %d", key[:80], os.getpid())
    redis_store.client().rpush(runs_key(), json.dumps({"key": key, "pid": os.getpid(), "at": time.time()}))
    os.kill(os.getpid(), signal.SIGKILL)


class DrillFailure(RuntimeError):
    """The error fail_after_retries raises on every run."""


@app.task(bind=True, max_retries=2)
def fail_after_retries(self: Task[Any, Any], key: str) -> None:
    """Record a run like record_run, then fail; retried max_retries times 1 s apart, then a final failure (a dead
    letter). What an error tracker should report once, not once per attempt."""
    redis_store.client().rpush(runs_key(), json.dumps({"key": key, "pid": os.getpid(), "at": time.time()}))
    attempt = self.request.retries + 1
    # retry() raises Retry while retries are left, then the DrillFailure itself (the final failure).
    raise self.retry(countdown=1, exc=DrillFailure(f"drill failure {key} on attempt {attempt}"))
