"""Boot tier, message lifecycle: countdowns that do not block a worker, countdowns beyond the limit refused, and no
double side effect when the broker connection drops mid-task.

Runs on a stack of its own per broker (rendered as "Delivery <broker>"): the tests start workers with shortened
limits through the environment and cut broker connections, which the session `booted` stack must not see. Workers
are started through the generated `bin/worker`, tasks published by separate client processes. Each test prints the
figures it measured.
"""

import contextlib
import functools
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
import services
from booted import BootedProject, Proc, running_project
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

    def client(self, code: str, env: dict[str, str] | None = None, timeout: float = 120) -> object:
        """Run `code` as a producer process with the project's settings plus `env`; returns its last line as JSON."""
        program = f"import json, time\nimport {self.project.package} as pkg\n" + code
        result = self.project.run(sys.executable, "-c", program, env=env, timeout=timeout)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

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
        runs_key = json.loads(
            project.run(
                sys.executable,
                "-c",
                f"import json; from {project.package}.tasks.diagnostics import runs_key; print(json.dumps(runs_key()))",
            ).stdout
        )
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


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll until `predicate()` is true; a deadline, not a sleep: the 2-core machine may be busy."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.2)


# --- 1. A countdown does not hold a prefetch-1 worker -------------------------------------------------------

COUNTDOWN = 30
IMMEDIATE = 20


def test_countdown_task_leaves_a_prefetch_one_worker_free(workers: Stack) -> None:
    """A worker with prefetch 1 (the `high` profile) gets a task due in 30 s, then 20 due now: they must not wait."""
    queue = workers.project.queues[1]
    worker = workers.worker(queue, "eta-high")
    worker.wait_for_log("ready.")
    tag = uuid.uuid4().hex[:6]
    sent = workers.client(
        f"""
from {workers.project.package}.tasks.diagnostics import record_run
delayed_at = time.time()
record_run.apply_async(args=["delayed-{tag}"], countdown={COUNTDOWN}, queue="{queue}")
time.sleep(1)
now_at = time.time()
for i in range({IMMEDIATE}):
    record_run.apply_async(args=[f"now-{tag}-{{i}}"], queue="{queue}")
print(json.dumps({{"delayed": delayed_at, "now": now_at}}))
"""
    )
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


# --- 2. Countdowns beyond CELERY_MAX_COUNTDOWN are refused -----------------------------------------------------

# Shortened through the environment (development accepts them): the limit, and a visibility timeout just above the
# rule's minimum of MAX_COUNTDOWN + (MAX_PREFETCH_MULTIPLIER + 1) x TASK_TIME_LIMIT = 6 + 5 x 2 = 16 s.
SHORT = {
    "CELERY_MAX_COUNTDOWN": "6",
    "CELERY_TASK_TIME_LIMIT": "2",
    "CELERY_TASK_SOFT_TIME_LIMIT": "1",
    "CELERY_VISIBILITY_TIMEOUT": "17",
}


def test_countdown_over_the_limit_is_refused_and_one_near_it_runs_once(workers: Stack) -> None:
    queue = workers.project.queues[1]
    tag = uuid.uuid4().hex[:6]
    package = workers.project.package
    # No worker yet: whatever the refused publish sent would stay in the broker, countable.
    before = workers.queued(queue)
    refused = workers.client(
        f"""
from {package}.tasks.diagnostics import record_run
try:
    record_run.apply_async(args=["far-{tag}"], countdown=60, queue="{queue}")
    print(json.dumps("accepted"))
except Exception as exc:
    print(json.dumps(f"{{type(exc).__name__}}: {{exc}}"))
""",
        env=SHORT,
    )
    after = workers.queued(queue)
    print(f"{workers.broker}: countdown=60, CELERY_MAX_COUNTDOWN=6 -> {refused}; queued before {before}, after {after}")
    assert refused.startswith("CountdownTooLong: ") and "CELERY_MAX_COUNTDOWN" in refused and "6s limit" in refused
    assert after == before, "the refused task was sent anyway"

    worker = workers.worker(queue, "eta-limit", SHORT)
    worker.wait_for_log("ready.")
    sent_at = workers.client(
        f"""
from {package}.tasks.diagnostics import record_run
record_run.apply_async(args=["near-{tag}"], countdown=5, queue="{queue}")
print(json.dumps(time.time()))
""",
        env=SHORT,
    )
    wait_until(lambda: workers.runs(f"near-{tag}"), 60, "the task near the limit")
    # Past the visibility timeout counted from its delivery, plus time for kombu to restore an unacknowledged message.
    settle = sent_at + int(SHORT["CELERY_VISIBILITY_TIMEOUT"]) + 8 - time.time()
    time.sleep(max(0.0, settle) if workers.broker == "redis" else 2)
    runs = workers.runs(f"near-{tag}")
    late = runs[0]["at"] - sent_at
    print(f"{workers.broker}: countdown=5 (limit 6) ran {len(runs)} time(s), {late:.2f}s after it was sent")
    assert len(runs) == 1, f"the task near the limit ran {len(runs)} times"
    assert worker.popen.poll() is None


# --- 3. No double side effect when the broker connection drops mid-task --------------------------------------

WORK_AFTER_EFFECT = 8
DROP = {
    "CELERY_TASK_TIME_LIMIT": "12",  # the claim's TTL follows it (12 + 30 s), and with it the busy-retry interval
    "CELERY_TASK_SOFT_TIME_LIMIT": "10",
    "CELERY_VISIBILITY_TIMEOUT": "15",  # above the task's run, so only a lost ack brings it back
    "WORKER_CONCURRENCY": "2",  # room for the redelivery to run while the first run goes on
}


def drop_broker_connections(stack: Stack) -> None:
    if stack.broker == "redis":
        # Every client but ours: the worker's broker connections, its result and idempotency connections.
        stack.db.client_kill_filter(_type="normal", skipme=True)
    else:
        stack.rabbitmqctl("close_all_connections", "connection drop drill")


def test_connection_drop_mid_task_leaves_no_double_side_effect(workers: Stack) -> None:
    queue = workers.project.queues[0]  # diagnostics tasks are routed to the default queue
    worker = workers.worker(queue, "drop", DROP)
    worker.wait_for_log("ready.")
    key = f"once-{uuid.uuid4().hex[:6]}"
    task_id = workers.client(
        f"""
from {workers.project.package}.tasks.diagnostics import record_once
print(json.dumps(record_once.delay("{key}", {WORK_AFTER_EFFECT}).id))
""",
        env=DROP,
    )
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
