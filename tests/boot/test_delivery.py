"""Boot tier, message lifecycle: countdowns that do not block a worker, countdowns beyond the limit refused and ones
near it that fall due together run once, no double side effect when the broker connection drops mid-task, and (on
RabbitMQ) a rolling deploy over the direct exchanges earlier versions declared.

Runs on a stack of its own per broker (rendered as "Delivery <broker>"): the tests start workers with shortened
limits through the environment and cut broker connections, which the session `booted` stack must not see. Workers
are started through the generated `bin/worker`, tasks published by separate client processes. Each test prints the
figures it measured.
"""

import contextlib
import functools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
import services
from booted import BootedProject, Proc, running_project
from services import wait_until
from template import CHOICES

pytestmark = pytest.mark.boot


@dataclass
class Stack:
    project: BootedProject
    broker: str
    runs_key: str

    @functools.cached_property
    def db(self) -> redis.Redis:
        return redis.Redis.from_url(self.project.service("redis").url, decode_responses=True, socket_timeout=5)

    def runs(self, key: str) -> list[dict]:
        """Executions of record_run/record_once with this key, in order."""
        return [run for run in map(json.loads, self.db.lrange(self.runs_key, 0, -1)) if run["key"] == key]

    def worker(self, queue: str, name: str, env: dict[str, str] | None = None) -> Proc:
        extra = {
            "WORKER_QUEUES": queue,
            "WORKER_NAME": name,  # unique per test: RabbitMQ refuses two live nodes with one name
            "WORKER_HEARTBEAT_FILE": str(self.project.logs / f"{name}.heartbeat"),
            **(env or {}),
        }
        return self.project.start(f"worker-{name}", [str(self.project.path / "bin" / "worker")], extra)

    def rabbitmqctl(self, *args: str) -> str:
        rabbit = self.project.service("rabbitmq")
        ctl = services.RABBITMQ_REAL_SCRIPT.with_name("rabbitmqctl")
        done = self.project.run(str(ctl), *args, env=rabbit.env)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def queued(self, queue: str) -> int:
        """Messages waiting for `queue`; on RabbitMQ also those in the native delayed delivery queues."""
        if self.broker == "redis":
            return self.db.llen(queue)
        import kombu  # a passive declare answers with the current count (rabbitmqctl's figures lag by seconds)

        names = [queue, *(f"celery_delayed_{level}" for level in range(28))]
        total = 0
        with kombu.Connection(self.project.service("rabbitmq").url) as connection:
            for name in names:
                channel = connection.channel()
                try:
                    total += channel.queue_declare(name, passive=True).message_count
                except connection.channel_errors:  # not declared (yet): nothing in it
                    pass
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
        return total


@pytest.fixture(scope="module", params=CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    broker = request.param
    work = tmp_path_factory.mktemp(f"delivery-{broker}")
    with running_project(work, f"Delivery {broker}", broker, workers=False) as project:
        runs_key = project.program("runs_key")
        stack = Stack(project, broker, runs_key)
        yield stack
        stack.db.close()


@pytest.fixture
def workers(stack: Stack) -> Iterator[Stack]:
    """The stack, with every worker the test started stopped afterwards."""
    before = len(stack.project.procs)
    try:
        yield stack
    finally:
        for proc in stack.project.procs[before:]:
            proc.stop(timeout=60)


COUNTDOWN = 30
IMMEDIATE = 20


def test_countdown_task_leaves_a_prefetch_one_worker_free(workers: Stack) -> None:
    """A worker with prefetch 1 (the `high` profile) gets a task due in 30 s, then 20 due now: they must not wait."""
    queue = workers.project.queues[1]
    worker = workers.worker(queue, "eta-high")
    worker.wait_for_log("ready.")
    tag = uuid.uuid4().hex[:6]
    sent = workers.project.program("countdown_then_immediate", queue, tag, COUNTDOWN, IMMEDIATE, timeout=120)
    due = sent["delayed"] + COUNTDOWN

    def immediate_runs() -> list[dict]:
        return [run for i in range(IMMEDIATE) for run in workers.runs(f"now-{tag}-{i}")]

    wait_until(lambda: len(immediate_runs()) == IMMEDIATE, COUNTDOWN + 60, f"{IMMEDIATE} immediate tasks")
    last = max(run["at"] for run in immediate_runs())
    wait_until(lambda: workers.runs(f"delayed-{tag}"), COUNTDOWN + 60, "the delayed task")
    time.sleep(2)  # a second run of the delayed task would follow at once
    delayed = workers.runs(f"delayed-{tag}")
    offset = delayed[0]["at"] - due
    print(
        f"{workers.broker}: prefetch-1 worker holding a task due in {COUNTDOWN}s ran {IMMEDIATE} immediate tasks "
        f"{last - sent['now']:.2f}s after they were sent ({due - last:.1f}s before the delayed one was due); "
        f"the delayed task ran {len(delayed)} time(s), {offset:+.2f}s from its due time"
    )
    assert last < due and last < delayed[0]["at"], "the immediate tasks waited for the delayed one to come due"
    assert len(delayed) == 1, f"the delayed task ran {len(delayed)} times"
    assert abs(offset) <= 2, f"the delayed task ran {offset:+.2f}s from its due time"


# --- 2. Countdowns beyond CELERY_MAX_COUNTDOWN are refused; ones near it that fall due together run once ------

# Shortened through the environment; the visibility timeout is left to the rule (settings.py):
# MAX_COUNTDOWN + (ceil(max(WORKER_ETA_TASK_LIMIT, MAX_PREFETCH_MULTIPLIER x 1) / 1) + 1) x TASK_TIME_LIMIT + MARGIN
# = 6 + (10 + 1) x 4 + 2 = 52 s. The rule before it counted only the prefetch: 6 + (4 + 1) x 4 + 2 = 28 s.
SHORT = {
    "CELERY_MAX_COUNTDOWN": "6",
    "CELERY_TASK_TIME_LIMIT": "4",
    "CELERY_TASK_SOFT_TIME_LIMIT": "3",
    "CELERY_WORKER_ETA_TASK_LIMIT": "10",
    "CELERY_VISIBILITY_MARGIN": "2",
}
BUNCH = 10  # tasks due together: as many as one worker may hold (WORKER_ETA_TASK_LIMIT)
RUN_SECONDS = 2.5  # each, under the soft limit: together they run 25 s, past the old rule's 28 s from delivery

# A fleet of workers sweeps the unacknowledged index often (each worker every 100 s by default); this one sweeps
# every second with the project's own settings, so a visibility timeout that is too short shows within the test
# (tests/support/programs/sweep_unacked.py).


def test_countdown_over_the_limit_is_refused_and_near_ones_due_together_run_once(workers: Stack) -> None:
    queue = workers.project.queues[1]  # prefetch 1, one process: held tasks queue up behind each other
    tag = uuid.uuid4().hex[:6]
    package = workers.project.package
    # No worker yet: whatever the refused publish sent would stay in the broker, countable.
    before = workers.queued(queue)
    far = {"key": f"far-{tag}", "countdown": 60, "queue": queue}
    refused = workers.project.program("try_record_runs", [far], "accepted", env=SHORT, timeout=120)
    after = workers.queued(queue)
    print(f"{workers.broker}: countdown=60, CELERY_MAX_COUNTDOWN=6 -> {refused}; queued before {before}, after {after}")
    assert refused.startswith("CountdownTooLong: ") and "CELERY_MAX_COUNTDOWN" in refused and "6s limit" in refused
    assert after == before, "the refused task was sent anyway"

    worker = workers.worker(queue, "eta-limit", SHORT)
    worker.wait_for_log("ready.")
    # Under a second: RabbitMQ's native delayed delivery routes by whole seconds and refused 0 (ValueError).
    subsecond = {"key": f"subsecond-{tag}", "countdown": 0.4, "queue": queue}
    sent = workers.project.program("try_record_runs", [subsecond], True, env=SHORT, timeout=120)
    assert sent is True, f"countdown=0.4 refused: {sent}"
    wait_until(lambda: workers.runs(f"subsecond-{tag}"), 60, "the task sent with countdown=0.4")
    if workers.broker == "redis":  # on RabbitMQ send_task's countdown waits in the delay queues: 60 s for this check
        # send_task by name bypasses GuardedTask.apply_async: the worker refuses the ETA and dead-letters it.
        name, args = f"{package}.tasks.diagnostics.record_run", [f"far-{tag}"]
        far_id = workers.project.program("send_task_by_name", name, args, 600, queue, env=SHORT, timeout=120)

        def listed() -> list[str]:
            return workers.project.program("dead_letter_reasons", far_id, env=SHORT, timeout=120)

        wait_until(listed, 60, "the far send_task among the dead letters")
        print(f"{workers.broker}: send_task with countdown=600 -> dead letter {listed()}")
        assert not workers.runs(f"far-{tag}")

    sent_at = workers.project.program(
        "countdown_bunch", f"near-{tag}-", BUNCH, RUN_SECONDS, 5, queue, env=SHORT, timeout=120
    )
    keys = [f"near-{tag}-{i}" for i in range(BUNCH)]
    timeout = 5 + BUNCH * RUN_SECONDS + 90
    if workers.broker == "redis":
        sweep = (timeout, workers.runs_key, f"near-{tag}-", BUNCH)
        swept = workers.project.program("sweep_unacked", *sweep, env=SHORT, timeout=timeout + 60)
    else:
        swept = {}
        wait_until(lambda: all(workers.runs(key) for key in keys), timeout, f"{BUNCH} tasks due together")
        time.sleep(2)
    runs = {key: workers.runs(key) for key in keys}
    last = max(run["at"] for key in keys for run in runs[key]) - sent_at
    print(
        f"{workers.broker}: {BUNCH} tasks with countdown=5 (limit 6) due together on a prefetch-1 one-process worker, "
        f"{RUN_SECONDS}s each; last finished {last:.1f}s after sending; runs per task "
        f"{sorted(len(r) for r in runs.values())}; {swept or 'no sweeps (RabbitMQ)'}; countdown=0.4 ran "
        f"{len(workers.runs(f'subsecond-{tag}'))} time(s)"
    )
    assert all(runs.values()), f"tasks that never ran: {[key for key, r in runs.items() if not r]}"
    twice = [key for key, r in runs.items() if len(r) > 1]
    assert not twice, f"tasks that ran twice: {twice}"
    assert len(workers.runs(f"subsecond-{tag}")) == 1
    assert worker.popen.poll() is None


# --- 3. No double side effect when the broker connection drops mid-task --------------------------------------

# Long enough for the drop to land while the task still runs: `rabbitmqctl` boots an Erlang VM, seconds on a loaded
# machine (at 8 s the task had acked before the drop, twice in a full parallel run).
WORK_AFTER_EFFECT = 16
DROP = {
    "CELERY_TASK_TIME_LIMIT": "22",  # the claim's TTL follows it (22 + 30 s), and with it the busy-retry interval
    "CELERY_TASK_SOFT_TIME_LIMIT": "20",
    "CELERY_VISIBILITY_TIMEOUT": "25",  # above the task's run, so only a lost ack brings it back
    "WORKER_CONCURRENCY": "2",  # room for the redelivery to run while the first run goes on
}


def drop_broker_connections(stack: Stack) -> None:
    if stack.broker == "redis":
        # Every client but ours: the worker's broker connections, its result and idempotency connections.
        stack.db.client_kill_filter(_type="normal", skipme=True)
    else:
        stack.rabbitmqctl("close_all_connections", "connection drop drill")


def test_connection_drop_mid_task_leaves_no_double_side_effect(workers: Stack) -> None:
    queue = workers.project.queues[0]  # diagnostics tasks have no route: the default queue
    worker = workers.worker(queue, "drop", DROP)
    worker.wait_for_log("ready.")
    key = f"once-{uuid.uuid4().hex[:6]}"
    task_id = workers.project.program("record_once", key, WORK_AFTER_EFFECT, env=DROP, timeout=120)
    worker.wait_for_log(f"record_once {key}: recorded")
    drop_broker_connections(workers)
    dropped_at = time.monotonic()
    # Read the outbox only once both deliveries finished: the first run, and a redelivery that found the key done
    # (directly, or after retrying while the first run still held its claim). Not failed on time here: the
    # side-effect count below says what went wrong.
    with contextlib.suppress(AssertionError):
        wait_until(lambda: worker.count(f"record_once[{task_id}] succeeded") >= 2, 150, "both deliveries to finish")
    deliveries = worker.count(f"record_once[{task_id}] received")
    effects = len(workers.runs(key))
    print(
        f"{workers.broker}: broker connections dropped mid-task; {deliveries} deliveries of one message, "
        f"{effects} side effect(s), {effects - 1} duplicate(s); settled {time.monotonic() - dropped_at:.1f}s after "
        "the drop"
    )
    assert effects == 1, f"{effects - 1} duplicate side effect(s)"
    assert deliveries >= 2, "the drop did not cause a redelivery: nothing was tested"
    assert worker.count(f"record_once[{task_id}] succeeded") >= 2, "a delivery did not finish"
    assert worker.popen.poll() is None, "the worker exited"


# --- 4. RabbitMQ: a rolling deploy over the direct exchanges of earlier versions ---------------------------------


def test_new_workers_publish_and_consume_next_to_the_old_direct_exchange(workers: Stack) -> None:
    """Earlier versions declared each queue's exchange as direct, named like the queue. Old processes keep using it
    during a rolling deploy; new ones must neither fail to declare theirs (PRECONDITION_FAILED) nor miss messages."""
    if workers.broker != "rabbitmq":
        pytest.skip("exchanges are a RabbitMQ matter")
    queue = workers.project.queues[-1]
    tag = uuid.uuid4().hex[:6]
    # As the previous version did, through kombu: the quorum queue bound to a direct exchange of its own name, and a
    # task published through that exchange by an "old" process (the same message Celery sends, routed the old way).
    workers.project.program("old_direct_exchange", queue, f"old-{tag}", timeout=120)
    worker = workers.worker(queue, "upgrade")
    worker.wait_for_log("ready.")
    new = [{"key": f"new-{tag}", "queue": queue}, {"key": f"delayed-{tag}", "countdown": 2, "queue": queue}]
    published = workers.project.program("try_record_runs", new, "published", timeout=120)
    assert published == "published", published
    for key in (f"old-{tag}", f"new-{tag}", f"delayed-{tag}"):
        wait_until(lambda key=key: workers.runs(key), 60, key)
    bindings = workers.rabbitmqctl("list_bindings", "source_name", "destination_name")
    print(
        f"rabbitmq: old direct exchange and new topic exchange side by side: old-style, new and delayed task each ran "
        f"{[len(workers.runs(k)) for k in (f'old-{tag}', f'new-{tag}', f'delayed-{tag}')]} time(s); queue "
        f"{queue!r} bound from {sorted({line.split()[0] for line in bindings.splitlines() if line.endswith(queue)})}"
    )
    assert worker.count("PRECONDITION_FAILED") == 0
    assert worker.popen.poll() is None
