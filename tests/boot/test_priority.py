"""Urgent work behind a backlog: the template's supported way is a queue of its own with a dedicated worker.

The incident: 1,000 normal tasks are waiting and an urgent one is sent. On the backlog's queue it waits for all of
them (FIFO). On its own queue ("high", consumed by its own worker) it starts as soon as that worker is free: the bound
documented in the generated README ("Urgent work"). The test records when each urgent task was sent and when it
started (record_run appends the time it ran; the urgent ones run at once), and how many normal tasks still waited.
"""

import json
import time
import uuid

import redis
from booted import BootedProject
from services import wait_until

BACKLOG = 1000  # normal tasks queued ahead of the urgent ones
BACKLOG_SECONDS = 0.05  # each normal task's run time: the backlog holds its worker well past BOUND
URGENT = 5
# The generated README's bound ("Urgent work"): with the urgent queue's worker free, an urgent task starts within the
# broker's delivery time; 10 s leaves room for a busy CI machine.
BOUND = 10.0


def test_urgent_tasks_start_within_bound_behind_a_backlog(booted: BootedProject) -> None:
    project = booted
    normal_queue, urgent_queue = project.queues[0], project.queues[1]
    tag = uuid.uuid4().hex[:8]
    runs_key = project.program("runs_key")
    db = redis.Redis.from_url(project.service("redis").url, decode_responses=True, socket_timeout=5)

    def runs(prefix: str) -> dict[str, float]:
        return {
            run["key"]: run["at"]
            for run in map(json.loads, db.lrange(runs_key, 0, -1))
            if run["key"].startswith(prefix)
        }

    backlog = {"queue": normal_queue, "count": BACKLOG, "seconds": BACKLOG_SECONDS, "prefix": f"normal-{tag}-"}
    urgent = {"queue": urgent_queue, "count": URGENT, "prefix": f"urgent-{tag}-"}
    sent = project.program("backlog_then_urgent", backlog, urgent, timeout=300)
    try:

        def report() -> str:
            started = runs(urgent["prefix"])
            delays = {
                key: round(started[key] - at, 3) if key in started else None for key, at in sent["urgent"].items()
            }
            waiting = BACKLOG - len(runs(backlog["prefix"]))
            return (
                f"{URGENT} urgent tasks on {urgent['queue']!r} behind {BACKLOG} normal ones on {normal_queue!r} "
                f"(sent in {sent['backlog_send_s']}s): start delays {delays}; {waiting} normal tasks still waiting"
            )

        wait_until(lambda: len(runs(urgent["prefix"])) == URGENT, BOUND, report)
        print(report())
        started = runs(urgent["prefix"])
        late = {key: started[key] - at for key, at in sent["urgent"].items() if started[key] - at > BOUND}
        assert not late, f"urgent tasks started later than {BOUND}s after they were sent: {report()}"
        # The backlog was still there: the urgent tasks went past it, they did not find an idle system.
        assert BACKLOG - len(runs(backlog["prefix"])) > 0, report()
    finally:
        # The session's other tests share this worker: drop what is left of the backlog, and let the worker finish
        # the few tasks it had prefetched before the next test looks at it.
        result = project.module("ops", "purge", normal_queue, "--yes")
        assert result.returncode == 0, result.stderr

        def settled() -> bool:
            before = len(runs(backlog["prefix"]))
            time.sleep(0.5)
            return len(runs(backlog["prefix"])) == before

        wait_until(settled, 30, "the backlog's prefetched tasks still running after the purge")
