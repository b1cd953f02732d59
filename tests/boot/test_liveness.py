"""Boot tier, liveness during broker outages: the worker probe (`health worker`) stays green while a worker waits for
its broker, goes red when the main loop is really stuck, and beat rides out a Redis restart.

The probe's window is shortened through the environment (the production defaults stay in heartbeat.py): a touch every
second, stale after 5 s. These tests kill brokers, so they run on stacks of their own ("Live redis", "Live rabbitmq").
"""

import contextlib
import itertools
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import services
from booted import BootedProject, Proc, running_project
from services import wait_until
from template import CHOICES

pytestmark = pytest.mark.boot

INTERVAL, STALE = 1, 5
PROBE_ENV = {
    "WORKER_HEARTBEAT_INTERVAL": str(INTERVAL),
    "WORKER_HEARTBEAT_STALE_AFTER": str(STALE),
    # The settings' rule, kept with the shorter window: one Redis connection attempt (connect + read) < stale limit.
    "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT": "1",
    "CELERY_REDIS_SOCKET_TIMEOUT": "2",
}
# Longer than the probe's whole window: without the reconnection touches the probe fails about STALE s in.
OUTAGE = 3 * STALE


@dataclass
class Stack:
    project: BootedProject
    broker: services.Service
    runs_key: str

    def db(self) -> redis.Redis:
        return redis.Redis.from_url(self.project.service("redis").url, decode_responses=True, socket_timeout=5)

    def ran(self, key: str) -> int:
        with contextlib.closing(self.db()) as db:
            return sum(1 for raw in db.lrange(self.runs_key, 0, -1) if json.loads(raw)["key"] == key)

    def worker(self, name: str, **env: str) -> Proc:
        extra = {
            "WORKER_QUEUES": self.project.queues[0],  # record_run's queue
            "WORKER_NAME": name,
            "WORKER_HEARTBEAT_FILE": str(self.heartbeat(name)),
            **PROBE_ENV,
            **env,
        }
        return self.project.start(f"worker-{name}", [str(self.project.path / "bin" / "worker")], extra)

    def heartbeat(self, name: str) -> Path:
        return self.project.logs / f"{name}.heartbeat"

    def health(self, name: str, *args: str) -> tuple[int, str]:
        """The liveness probe (`--ready`: the readiness and startup probe) as Kubernetes runs it, with the worker's
        environment."""
        env = {"WORKER_NAME": name, "WORKER_HEARTBEAT_FILE": str(self.heartbeat(name)), **PROBE_ENV}
        result = self.project.module("health", "worker", *args, env=env)
        return result.returncode, (result.stderr or result.stdout).strip()

    def publish(self, key: str, seconds: float = 0) -> None:
        self.project.program("record_runs", [{"key": key, "seconds": seconds}])


def boot_stack(work: Path, broker: str) -> Iterator[Stack]:
    with running_project(work, f"Live {broker}", broker, workers=False) as project:
        runs_key = project.program("runs_key")
        yield Stack(project, project.service(broker), runs_key)


@pytest.fixture(scope="module")
def live_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from boot_stack(tmp_path_factory.mktemp("live-redis"), "redis")


@pytest.fixture(scope="module")
def live_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from boot_stack(tmp_path_factory.mktemp("live-rabbitmq"), "rabbitmq")


def fresh(stack: Stack) -> Iterator[Stack]:
    """Brokers up (a failed test may have left one down), and every process a test started stopped after it."""
    for service in stack.project.services:
        if not service.is_running():
            service.restart()
    before = len(stack.project.procs)
    try:
        yield stack
    finally:
        for proc in stack.project.procs[before:]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGCONT)  # a frozen worker cannot act on SIGTERM
            proc.stop(timeout=60)  # and whatever it left in its process group


@pytest.fixture(params=CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def broker_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    yield from fresh(request.getfixturevalue(f"live_{request.param}"))


@pytest.fixture
def redis_stack(live_redis: Stack) -> Iterator[Stack]:
    yield from fresh(live_redis)


def test_worker_waiting_for_its_broker_stays_live_and_reconnects_in_the_same_process(broker_stack: Stack) -> None:
    stack = broker_stack
    worker = stack.worker("outage")
    worker.wait_for_log("ready.")
    warmup = f"warmup-{uuid.uuid4().hex[:6]}"
    stack.publish(warmup)
    wait_until(lambda: stack.ran(warmup), 60, "a first task")
    assert stack.health("outage")[0] == 0
    pid = worker.popen.pid

    assert stack.health("outage", "--ready")[0] == 0, "connected: ready"
    failures: list[str] = []
    probes = 0
    ready_during: list[str] = []

    def probe() -> None:
        nonlocal probes
        code, text = stack.health("outage")
        probes += 1
        if code != 0:
            failures.append(f"{time.monotonic() - down_at:.1f}s into the outage: {text}")

    stack.broker.kill()
    down_at = time.monotonic()
    while time.monotonic() - down_at < OUTAGE:
        probe()
        time.sleep(0.5)
    ready_during.append(stack.health("outage", "--ready")[1])  # not ready while reconnecting
    stack.broker.restart()
    up_at = time.monotonic()
    outage = up_at - down_at
    key = f"after-{uuid.uuid4().hex[:6]}"
    stack.publish(key)  # sent once the broker is back; the worker may still be in its back-off
    while not stack.ran(key):
        assert time.monotonic() - up_at < 120, f"no task done 120 s after the broker returned:\n{worker.log}"
        assert worker.popen.poll() is None, f"the worker exited:\n{services.log_tail(worker.log)}"
        probe()
        time.sleep(0.5)
    done = time.monotonic() - up_at
    probe()
    print(
        f"{stack.broker.name} down {outage:.1f}s (probe window {STALE}s): {probes} probes, {len(failures)} failed; "
        f"first task done {done:.1f}s after the broker returned, same process (pid {pid})"
    )
    assert failures == [], "the liveness probe failed while the worker waited for its broker:\n" + "\n".join(failures)
    assert worker.popen.poll() is None and worker.popen.pid == pid
    assert worker.count("ready.") == 1, "the worker started again instead of reconnecting"
    assert "not connected to the broker" in ready_during[0], ready_during
    assert stack.health("outage", "--ready")[0] == 0, "reconnected: ready again"


def test_frozen_main_loop_fails_the_probe_within_the_stale_limit(broker_stack: Stack) -> None:
    stack = broker_stack
    worker = stack.worker("frozen")
    worker.wait_for_log("ready.")
    # Freeze it in its event loop (the timer has touched the file since connecting), with the broker reachable.
    wait_until(lambda: stack.heartbeat("frozen").read_text().split()[-1] == "running", 30, "an event-loop touch")
    assert stack.health("frozen")[0] == 0
    os.kill(worker.popen.pid, signal.SIGSTOP)  # the main process only: the broker stays up, the pool keeps running
    frozen_at = time.monotonic()
    try:
        result: list[tuple[int, str]] = []
        wait_until(lambda: result.append(stack.health("frozen")) or result[-1][0] != 0, STALE + 60, "a failed probe")
        failed_after = time.monotonic() - frozen_at
    finally:
        os.kill(worker.popen.pid, signal.SIGCONT)
    print(f"main process stopped: probe failed {failed_after:.1f}s later (limit {STALE}s): {result[-1][1]}")
    assert "main loop is stuck" in result[-1][1]
    # The property under test, not a speed: the probe fails once the file is STALE old (plus a probe run and slack
    # for a busy host), not whenever something else gives out.
    assert failed_after <= STALE + 10, f"the probe failed {failed_after:.1f}s after the freeze; stale limit {STALE}s"
    # Thawed, the same process touches its heartbeat again: the probe recovers without a restart.
    wait_until(lambda: stack.health("frozen")[0] == 0, 60, "the probe passing again after SIGCONT")


def probe_for(stack: Stack, name: str, seconds: float) -> tuple[list[str], list[str]]:
    """Run the liveness and readiness probes for `seconds`: (liveness failures, readiness results)."""
    started, dead, ready = time.monotonic(), [], []
    while time.monotonic() - started < seconds:
        code, text = stack.health(name)
        if code != 0:
            dead.append(f"{time.monotonic() - started:.1f}s: {text}")
        ready_code, ready_text = stack.health(name, "--ready")
        ready.append(f"{ready_code}: {ready_text}"[:200])
        time.sleep(0.5)
    return dead, ready


def test_worker_with_a_wrong_broker_password_is_live_but_never_ready(redis_stack: Stack, tmp_path: Path) -> None:
    """A bad Secret: kombu retries the refused password forever. Liveness must not restart the worker (it would only
    crash-loop), and readiness must fail, so a rollout of it stalls instead of replacing working workers."""
    guarded = services.start_redis(tmp_path / "guarded", password="right-password")
    try:
        wrong = guarded.url.replace("right-password", "wrong-password")
        worker = redis_stack.worker("badauth", CELERY_BROKER_URL=wrong)
        wait_until(lambda: redis_stack.heartbeat("badauth").exists(), 60, "a first heartbeat")
        dead, ready = probe_for(redis_stack, "badauth", 2 * STALE)
        log = worker.log.read_text(errors="replace")
        print(f"wrong password, {2 * STALE}s of probes: {len(dead)} liveness failures; readiness: {ready[-1]}")
        assert worker.popen.poll() is None, f"the worker exited:\n{services.log_tail(worker.log)}"
        assert "invalid username-password pair" in log or "Authentication" in log, services.log_tail(worker.log)
        assert dead == [], "liveness failed while the worker retried its broker:\n" + "\n".join(dead)
        assert all(r.startswith("1: ") and "not connected to the broker" in r for r in ready), ready
    finally:
        guarded.kill()


def test_worker_on_an_unresponsive_broker_stays_live(redis_stack: Stack) -> None:
    """A blackholed broker: the kernel completes the TCP handshake (listen backlog), nothing ever answers. Each
    connection attempt must end (socket timeouts) before the heartbeat goes stale; PROBE_ENV shortens the timeouts
    with the stale limit, keeping the rule connect + read < stale."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(128)  # never accept()ed: connections queue in the backlog and see no reply
        url = f"redis://127.0.0.1:{hole.getsockname()[1]}/0"
        worker = redis_stack.worker("blackhole", CELERY_BROKER_URL=url)
        wait_until(lambda: redis_stack.heartbeat("blackhole").exists(), 60, "a first heartbeat")
        dead, ready = probe_for(redis_stack, "blackhole", OUTAGE)
        print(f"unresponsive broker, {OUTAGE}s of probes (stale limit {STALE}s): {len(dead)} liveness failures")
        assert worker.popen.poll() is None, f"the worker exited:\n{services.log_tail(worker.log)}"
        assert dead == [], "liveness failed while the worker waited on an unresponsive broker:\n" + "\n".join(dead)
        assert all(r.startswith("1: ") for r in ready), ready


def test_solo_pool_is_refused_with_the_reason(redis_stack: Stack) -> None:
    """With the solo pool a task runs on the main thread: the heartbeat stops for the task's whole run and the probe
    would restart the worker in the middle of any task longer than the stale limit."""
    worker = redis_stack.worker("solo", WORKER_POOL="solo")
    with contextlib.suppress(Exception):
        worker.popen.wait(60)
    log = worker.log.read_text()
    if worker.popen.poll() is None:
        key = f"solo-{uuid.uuid4().hex[:6]}"
        redis_stack.publish(key, 2 * STALE)
        worker.wait_for_log(f"record_run {key}: running")
        wait_until(lambda: redis_stack.health("solo")[0] != 0, 3 * STALE, "the probe during a long solo task")
        pytest.fail(f"bin/worker started a solo pool; during a {2 * STALE}s task: {redis_stack.health('solo')[1]}")
    print(f"WORKER_POOL=solo: exit {worker.popen.returncode}: {log.strip()}")
    assert worker.popen.returncode != 0 and "WORKER_POOL=solo" in log and "heartbeat" in log


# --- beat ----------------------------------------------------------------------------------------------------

# A 1 s entry and loop; the lock (10 s) outlives the few seconds Redis is down, as the default 25 s does in production.
BEAT_ENV = {
    "CELERY_PRICE_REFRESH_SECONDS": "1",
    "CELERY_BEAT_MAX_LOOP_INTERVAL": "1",
    "CELERY_REDBEAT_LOCK_TIMEOUT": "10",
}
SENT = "Sending due task refresh-eurusd"


def test_two_beats_ride_out_a_redis_restart_then_the_standby_takes_over_once(redis_stack: Stack) -> None:
    """An active beat and a standby waiting for the lock; Redis restarted under both. Both survive (the standby's
    lock wait fails on the outage), the active one keeps sending, the standby takes over when the active one stops,
    and no tick is sent twice (sends counted from both logs). Then Redis stays down for longer than the lock
    timeout: the beat holding the lock exits, saying so."""
    stack, project = redis_stack, redis_stack.project
    queue = project.program("schedule_queue", "refresh-eurusd")
    worker = stack.worker("prices", WORKER_QUEUES=queue)
    worker.wait_for_log("ready.")
    active = project.start("beat-active", ["bin/beat"], BEAT_ENV)
    wait_until(lambda: len(active.stamps(SENT)) >= 3, 60, "beat sending")
    standby = project.start("beat-standby", ["bin/beat"], BEAT_ENV)
    standby.wait_for_log("beat: Starting...")
    time.sleep(2)  # in its wait for the lock
    stack.broker.kill()
    killed_at = time.time()
    time.sleep(5)
    stack.broker.restart()
    up_at = time.time()
    time.sleep(8)
    for beat in (active, standby):
        assert beat.popen.poll() is None, f"{beat.name} exited after the Redis restart:\n{services.log_tail(beat.log)}"
    assert standby.stamps(SENT) == [], "the standby sent while the active beat held the lock"
    assert active.stop(timeout=60) == 0
    stopped_at = time.time()
    wait_until(lambda: len(standby.stamps(SENT)) >= 3, 60, "the standby taking over")
    taken_at = standby.stamps(SENT)[0]

    sent = sorted(active.stamps(SENT) + standby.stamps(SENT))
    failed = len(active.stamps("Message Error")) + len(standby.stamps("Message Error"))
    succeeded = len(sent) - failed
    wait_until(lambda: worker.count("succeeded in") >= succeeded, 60, "the worker running every tick beat sent")
    runs = worker.count("succeeded in")
    up = [t for t in sent if t < killed_at or t >= up_at]
    # Ticks a 1 s entry should have sent while Redis was up and a beat held the lock, to the last send counted.
    expected = round(killed_at - sent[0]) + round(stopped_at - up_at) + round(sent[-1] - taken_at) + 1
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    print(
        f"Redis down {up_at - killed_at:.1f}s under two beats: {len(sent)} sends ({len(sent) - len(up)} during the "
        f"outage), {failed} failed to publish, worker ran {runs}; about {expected} expected while Redis was up; "
        f"shortest gap {min(gaps):.2f}s; standby's first send {taken_at - stopped_at:.1f}s after the active one stopped"
    )
    assert runs == succeeded, "a tick was enqueued twice, or a sent one was lost"
    assert min(gaps) > 0.5, "two sends of the 1 s entry in the same second: a doubled tick"
    assert len(up) >= expected - 3, "ticks lost beyond the outage and the takeover"

    # Redis gone for longer than the lock timeout: the lock has expired, the beat that held it exits with the reason.
    stack.broker.kill()
    try:
        standby.popen.wait(int(BEAT_ENV["CELERY_REDBEAT_LOCK_TIMEOUT"]) + 60)
    finally:
        stack.broker.restart()
    log = standby.log.read_text(errors="replace")
    print(f"Redis down past the lock timeout: beat exit {standby.popen.returncode}")
    assert standby.popen.returncode != 0, services.log_tail(standby.log)
    assert "longer than the lock timeout" in log and "Redis unreachable" in log, services.log_tail(standby.log)
