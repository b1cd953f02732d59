"""Boot tier, poison messages: a task whose pool process dies every time it runs (OOM kill, segfault) is tried a
bounded number of times, then dead-lettered with the reason; the worker serves other tasks throughout.

Runs on the session `booted` stack, per broker: the fault task (devtools/diagnostics.py `lose_worker`) kills only the
pool process running it; the worker's main process lives on and replaces it, as it does after a real OOM kill.
"""

import json
import time
import uuid

import pytest
import redis
from booted import BootedProject
from services import eventually, wait_until

pytestmark = pytest.mark.boot


def test_a_task_that_kills_its_pool_process_is_tried_n_times_then_dead_lettered(booted: BootedProject) -> None:
    info = booted.program("poison_info")
    bound, db = info["bound"], redis.Redis.from_url(booted.env["REDIS_URL"], decode_responses=True)
    worker = booted.proc(f"worker-{booted.queues[0]}")  # lose_worker and record_run go to the default queue
    main_pid = worker.popen.pid

    def runs(key: str) -> int:
        return sum(1 for raw in db.lrange(info["runs_key"], 0, -1) if json.loads(raw)["key"] == key)

    poison, tag = f"poison-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex[:6]
    during, after = [f"during-{tag}-{i}" for i in range(10)], [f"after-{tag}-{i}" for i in range(5)]
    poison_id = booted.program("send_poison", poison, during)
    started = time.monotonic()

    def dead_letter() -> str:
        listing = booted.module("ops", "deadletters", "list")
        return next((line for line in listing.stdout.splitlines() if poison_id in line), "")

    if not eventually(dead_letter, 120):
        tried = runs(poison)
        why = (
            "it was not put back in the queue after its pool process died (task_reject_on_worker_lost off?): "
            "one OOM kill loses the task"
            if tried < bound
            else "the bound did not stop it"
        )
        pytest.fail(f"poison message not dead-lettered within 120s: tried {tried} times (bound {bound}); {why}")
    settled = time.monotonic() - started
    line = dead_letter()
    wait_until(lambda: all(runs(key) for key in during), 60, "the tasks sent behind the poison message")
    booted.program("record_runs", [{"key": key, "seconds": 0} for key in after])
    wait_until(lambda: all(runs(key) for key in after), 60, "the tasks sent after it was dead-lettered")
    time.sleep(2)  # a redelivery after the dead letter would run now
    attempts = runs(poison)
    print(
        f"poison message (broker={'rabbitmq' if booted.service('rabbitmq') else 'redis'}): tried {attempts} times, "
        f"dead-lettered {settled:.1f}s after it was sent: {line.split('  ', 1)[-1]}; {len(during)} tasks sent behind "
        f"it and {len(after)} sent after it ran on the same worker (pid {main_pid})"
    )
    # Tried exactly `bound` times: fewer means the message was not redelivered after its pool process died
    # (task_reject_on_worker_lost off: one OOM kill would lose the task), more means the bound does not hold.
    assert attempts == bound, f"tried {attempts} times, expected exactly {bound}: {line}"
    assert f"worker lost {bound} times" in line, line
    assert f"queue={booted.queues[0]}" in line, line
    assert worker.popen.poll() is None and worker.popen.pid == main_pid, "the worker's main process died"
