"""Boot tier for the external-call example (tasks/rates.py, runtime/external.py): a real HTTP server started here that
answers, then fails with 503, then recovers; two real workers (bin/worker) share one circuit breaker through Redis.

What a user would see: once the API fails, the circuit opens for both workers and no request reaches the API until
the reset timeout lets a trial through; when the API recovers the circuit closes; every task either succeeds exactly
once or lands in the dead letters with its reason. A server that answers after 30 s holds a worker only for the read
timeout. Run with -s for the request counts per phase and the timings.

The windows are shortened through the environment (CELERY_BREAKER_*, CELERY_RATES_API_*), not in the code.
"""

import json
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis
from booted import BootedProject, running_project
from services import wait_until

pytestmark = pytest.mark.boot

FAIL_MAX = 3
RESET_TIMEOUT = 4
READ_TIMEOUT = 2
SLOW_ANSWER = 30
MAX_RETRIES = 12


class FlakyApi:
    """GET /rates/<pair>: 200 {"rate": ...} in phase "ok", 503 in "fail", 200 after SLOW_ANSWER s in "slow".
    Every request's arrival is recorded with its phase."""

    def __init__(self) -> None:
        self.phase = "ok"
        self.arrivals: list[tuple[float, str, str]] = []  # (time.time(), phase, path)
        self.answered_ok: dict[str, int] = {}  # path -> 200 answers sent
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with api.lock:
                    phase = api.phase
                    api.arrivals.append((time.time(), phase, self.path))
                if phase == "fail":
                    self.send_response(503)
                    self.end_headers()
                    return
                if phase == "slow":
                    time.sleep(SLOW_ANSWER)
                body = json.dumps({"rate": "1.0842"}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (read timeout): nothing was delivered
                    return
                with api.lock:
                    api.answered_ok[self.path] = api.answered_ok.get(self.path, 0) + 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True  # the slow answers must not hold the test's shutdown
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def count(self, phase: str | None = None, since: float = 0.0, until: float = float("inf")) -> int:
        with self.lock:
            return sum(1 for at, p, _ in self.arrivals if (phase is None or p == phase) and since <= at < until)


@pytest.fixture(scope="module")
def api() -> Iterator[FlakyApi]:
    server = FlakyApi()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()


@pytest.fixture(scope="module")
def stack(api: FlakyApi, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BootedProject]:
    name = f"Breaker redis {os.environ.get('PYTEST_XDIST_WORKER', '')}".strip()
    with running_project(tmp_path_factory.mktemp("breaker"), name, "redis", workers=False) as project:
        project.env.update(
            {
                "CELERY_RATES_API_URL": api.url,
                "CELERY_RATES_API_READ_TIMEOUT": str(READ_TIMEOUT),
                "CELERY_RATES_API_CONNECT_TIMEOUT": "2",
                "CELERY_RATES_API_MAX_RETRIES": str(MAX_RETRIES),
                "CELERY_BREAKER_FAIL_MAX": os.environ.get("TEST_BREAKER_FAIL_MAX", str(FAIL_MAX)),
                "CELERY_BREAKER_RESET_TIMEOUT": str(RESET_TIMEOUT),
            }
        )
        # Two worker processes on every queue, each its own bin/worker: the circuit must be shared between them.
        for worker in ("rates-a", "rates-b"):
            project.start_worker(",".join(project.queues), name=worker)
        for proc in project.procs:
            proc.wait_for_log("ready.")
        yield project


def circuit(stack: BootedProject) -> tuple[str, float]:
    """The shared state and opened_at (unix seconds, whole) straight from Redis."""
    client = redis.Redis.from_url(stack.env["REDIS_URL"], decode_responses=True)
    head = f"{stack.package}:breaker:rates_api:pybreaker"
    return client.get(f"{head}:state") or "none", float(client.get(f"{head}:opened_at") or 0)


def send(stack: BootedProject, pairs: list[str]) -> list[str]:
    return stack.program("send_tasks", "tasks.rates", "fetch_rate", [[[pair], {}] for pair in pairs])  # type: ignore[return-value]


def outcomes(stack: BootedProject, ids: list[str]) -> dict[str, list]:
    return stack.program("rate_outcomes", ids)  # type: ignore[return-value]


def test_circuit_opens_for_both_workers_and_closes_on_recovery(stack: BootedProject, api: FlakyApi) -> None:
    # Phase ok: the API answers, the tasks succeed.
    ok_ids = send(stack, [f"ok{i}" for i in range(4)])
    wait_until(lambda: all(o[0] == "SUCCESS" for o in outcomes(stack, ok_ids).values()), 120, "first tasks succeed")
    assert circuit(stack)[0] == "closed"

    # Phase fail: 503s. After FAIL_MAX failures in a row the circuit opens, for both workers.
    api.phase, failed_at = "fail", time.time()
    fail_ids = send(stack, [f"fail{i}" for i in range(10)])
    # Two with their retry budget used up (a message already retried MAX_RETRIES times): their next failure, or the
    # open circuit, sends them to the dead letters.
    spent = [
        stack.program("send_with_options", "tasks.rates", "fetch_rate", [f"spent{i}"], {"retries": MAX_RETRIES})
        for i in range(2)
    ]
    wait_until(
        lambda: circuit(stack)[0] == "open",
        120,
        lambda: f"the circuit opens ({api.count('fail')} requests reached the failing API, state {circuit(stack)[0]})",
    )
    opened_seen = time.time()
    _, opened_at = circuit(stack)
    # Stay down for two reset windows: trial calls fail and reopen it.
    trial_allowed = opened_at + RESET_TIMEOUT  # opened_at is whole seconds (truncated): this errs early
    time.sleep(2 * RESET_TIMEOUT + 1)
    during_open = api.count(since=opened_seen, until=trial_allowed)
    half_open_trials = api.count("fail", since=trial_allowed)
    failures_before_open = api.count("fail", until=opened_seen)

    # Phase recovered: the next trial succeeds and closes the circuit.
    api.phase, recovered_at = "ok", time.time()
    wait_until(lambda: circuit(stack)[0] == "closed", 120, "the circuit closes after recovery")
    closed_at = time.time()

    ids = ok_ids + fail_ids + spent
    wait_until(
        lambda: all(o[0] in ("SUCCESS", "FAILURE") for o in outcomes(stack, ids).values()),
        240,
        "every task ends (succeeded or dead-lettered)",
    )
    final = outcomes(stack, ids)
    succeeded = [i for i, o in final.items() if o[0] == "SUCCESS"]
    dead = {i: o[2] for i, o in final.items() if o[0] == "FAILURE"}
    print(
        f"\nrequests at the server: ok phase {api.count('ok', until=failed_at)}, "
        f"fail phase {api.count('fail')} ({failures_before_open} before open, {during_open} while open, "
        f"{half_open_trials} half-open trials), after recovery {api.count('ok', since=recovered_at)}"
        f"\nfailure -> open {opened_seen - failed_at:.1f}s; recovery -> closed {closed_at - recovered_at:.1f}s"
        f"\ntasks: {len(succeeded)} succeeded, {len(dead)} dead-lettered"
        f" {sorted({reason for reasons in dead.values() for reason in reasons})}"
    )
    assert during_open == 0, f"{during_open} requests reached the API while the circuit was open"
    for task_id, reasons in dead.items():
        assert reasons, f"task {task_id} failed without a dead letter"
    assert set(spent) <= dead.keys(), "a task past its retry budget was not dead-lettered"
    # Each success reached the API for a 200 exactly once (its pair is unique).
    pairs = {
        f"/rates/{p}" for p in [f"ok{i}" for i in range(4)] + [f"fail{i}" for i in range(10)] + ["spent0", "spent1"]
    }
    assert sum(api.answered_ok.get(p, 0) for p in pairs) == len(succeeded)
    assert all(api.answered_ok.get(p, 0) <= 1 for p in pairs), api.answered_ok


def test_slow_api_holds_a_worker_only_for_the_read_timeout(stack: BootedProject, api: FlakyApi) -> None:
    # "none": this test ran alone, no task has created the circuit yet.
    wait_until(lambda: circuit(stack)[0] in ("closed", "none"), 60, "the circuit is closed")
    api.phase = "slow"
    started = time.time()
    (task_id,) = send(stack, ["slow0"])
    wait_until(lambda: api.count("slow", since=started), 60, "the slow request arrives")
    arrived = max(at for at, phase, _ in api.arrivals if phase == "slow")
    state = wait_until(
        lambda: {"PENDING": None, "STARTED": None}.get(s := outcomes(stack, [task_id])[task_id][0], s),
        90,
        "the task's attempt ends",
    )
    api.phase = "ok"
    # The worker's own outcome line ("task <name>[<id>] retry in <ms> ms"): how long the attempt held the worker,
    # not how long this test took to notice (each poll is a Python process: seconds on a loaded machine).
    logs = "".join(proc.log.read_text() for proc in stack.procs if proc.name.startswith("worker-"))
    line = re.search(rf"\[{task_id}\] retry in ([\d.]+) ms", logs)
    assert line, f"no RETRY outcome line for {task_id} in the worker logs"
    held = float(line.group(1)) / 1000
    assert arrived >= started
    print(f"\nslow API (answers after {SLOW_ANSWER}s): worker let go after {held:.1f}s (read timeout {READ_TIMEOUT}s)")
    # The read timeout, with room for a busy machine, and far from the 30 s the server would make it wait.
    assert state == "RETRY" and held < READ_TIMEOUT + 10, f"the worker waited {held:.1f}s for the slow answer ({state})"
