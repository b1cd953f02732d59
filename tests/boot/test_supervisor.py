"""Boot tier for VM hosts: the generated deploy/supervisord.conf run by a real supervisord.

supervisord gets its own redis-server (and RabbitMQ node), so its workers do not share queues with the session's
booted workers. Figures printed: the time for the supervised stack to come up.
"""

import base64
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import services
from booted import BootedProject, Proc
from services import wait_until

pytestmark = pytest.mark.boot


@dataclass
class Supervised:
    project: BootedProject
    supervisord: Proc
    env: dict[str, str]
    conf: Path
    logs: Path
    flower: str
    flower_auth: str

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )

    def status(self) -> dict[str, str]:
        """program (group:name) -> state, from `supervisorctl status`."""
        lines = self.ctl("status").stdout.splitlines()
        return {line.split()[0]: line.split()[1] for line in lines if line.strip()}


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and not line.startswith("#"))
    return dict(pairs)


@pytest.fixture(scope="module")
def supervised(booted: BootedProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    work = tmp_path_factory.mktemp("supervisor")
    started = [services.start_redis(work / "redis")]
    broker_url = None
    if booted.service("rabbitmq"):
        started.append(services.start_rabbitmq(work / "rabbitmq"))
        broker_url = started[-1].url
    logs, run = work / "logs", work / "run"
    logs.mkdir()
    run.mkdir()
    secrets = dotenv(booted.path / ".env")
    flower_port = services.free_port()
    env = {
        **booted.env,
        "REDIS_URL": started[0].url,
        "SUPERVISOR_PASSWORD": secrets["SUPERVISOR_PASSWORD"],
        "SUPERVISOR_LOG_DIR": str(logs),
        "SUPERVISOR_RUN_DIR": str(run),
        "FLOWER_PORT": str(flower_port),
        "WEB_BIND": f"127.0.0.1:{services.free_port()}",
        "METRICS_PORT": str(services.free_port()),
        # Production format, so the logs can be checked as JSON.
        "LOG_FORMAT": "json",
    }
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    conf = booted.path / "deploy" / "supervisord.conf"
    began = time.monotonic()
    proc = booted.start("supervisord", [str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(conf)], env)
    sup = Supervised(booted, proc, env, conf, logs, f"http://127.0.0.1:{flower_port}", secrets["FLOWER_BASIC_AUTH"])
    try:

        def all_running() -> dict[str, str]:
            states = sup.status() if (run / "supervisor.sock").exists() else {}
            return states if states and all(state == "RUNNING" for state in states.values()) else {}

        states = wait_until(all_running, 90, lambda: f"all RUNNING: {sup.status()}\n{services.log_tail(proc.log)}")
        # Workers report ready in their logs once consuming; that is "up" for a user.
        for queue in booted.queues:
            wait_until(lambda queue=queue: "ready." in (logs / f"worker-{queue}.log").read_text(), 60)
        # Supervisor calls a program RUNNING after 5 s; on a loaded machine Flower and gunicorn listen later than that.
        for address in (f"127.0.0.1:{flower_port}", env["WEB_BIND"]):
            wait_until(lambda address=address: listening(address), 90)
        print(f"supervised stack up (all RUNNING, workers ready) in {time.monotonic() - began:.1f}s: {sorted(states)}")
        yield sup
    finally:
        sup.ctl("shutdown")
        assert proc.popen.wait(400) == 0
        for service in reversed(started):
            service.stop()


def listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def request(url: str, auth: str | None = None, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers, method=method), timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_every_program_runs_under_supervisor(supervised: Supervised) -> None:
    expected = {f"workers:worker-{q}" for q in supervised.project.queues} | {"beat", "metrics", "flower", "web"}
    assert set(supervised.status()) == expected


FLOWER_ROUTES = [
    ("GET", "/"),
    ("GET", "/workers"),
    ("GET", "/tasks"),
    ("GET", "/broker"),
    ("GET", "/api/workers"),
    ("GET", "/api/tasks"),
    ("GET", "/api/queues/length"),
    ("POST", "/api/task/async-apply/{task}"),
]


def test_flower_refuses_anonymous_and_wrong_passwords(supervised: Supervised) -> None:
    task = f"{supervised.project.package}.tasks.prices.fetch_price"
    user = supervised.flower_auth.split(":", 1)[0]
    codes = {}
    for method, route in FLOWER_ROUTES:
        url = supervised.flower + route.format(task=task)
        body = b'{"args": ["EURUSD"]}' if method == "POST" else None
        codes[route] = (request(url, None, method, body)[0], request(url, f"{user}:wrong-password", method, body)[0])
    print("flower without credentials / with a wrong password:", codes)
    assert all(pair == (401, 401) for pair in codes.values()), codes
    # Documented exception: Flower serves /healthcheck without authentication.
    assert request(supervised.flower + "/healthcheck")[0] == 200


def test_flower_with_credentials_lists_the_workers(supervised: Supervised) -> None:
    def workers() -> set[str]:
        status, body = request(supervised.flower + "/api/workers?refresh=1", supervised.flower_auth)
        assert status == 200
        return set(json.loads(body))

    wait_until(lambda: {name.split("@")[0] for name in workers()} >= set(supervised.project.queues), 60)
    for route in ("/", "/workers", "/tasks", "/broker"):
        assert request(supervised.flower + route, supervised.flower_auth)[0] == 200, route


def test_worker_logs_are_json_with_task_fields(supervised: Supervised) -> None:
    package, queue = supervised.project.package, supervised.project.queues[0]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from {package}.tasks.orders import process_order as t; print(t.delay("
            "{'order_id': 'sup-1', 'amount': '1.00', 'currency': 'EUR', 'email': 'a@example.com'}).get(timeout=30))",
        ],
        cwd=supervised.project.path,
        env=supervised.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    log = supervised.logs / f"worker-{queue}.log"

    def task_line() -> dict | None:
        for line in log.read_text().splitlines():
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("task_name", "").endswith("process_order") and entry.get("outcome") == "SUCCESS":
                return entry
        return None

    wait_until(task_line)
    entry = task_line()
    assert entry["queue"] == queue and entry["duration_ms"] >= 0 and entry["task_id"]
    # Every line the worker wrote after start-up is one JSON object (the Celery banner is printed before logging).
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["level"] for line in lines)


def web_call(supervised: Supervised, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    token = dotenv(supervised.project.path / ".env")["WEB_API_TOKEN"]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://{supervised.env['WEB_BIND']}{path}",
        data,
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_web_enqueues_a_task_and_returns_its_result(supervised: Supervised) -> None:
    status, accepted = web_call(supervised, "POST", "/tasks/prices.fetch_price", {"pair": "EURUSD"})
    assert status == 202, accepted
    results: list[dict] = []

    def finished() -> bool:
        results.append(web_call(supervised, "GET", f"/results/{accepted['task_id']}")[1])
        return results[-1].get("state") == "SUCCESS"

    wait_until(finished)
    assert results[-1]["result"] and accepted["queue"] in supervised.project.queues
    status, refused = web_call(supervised, "POST", "/tasks/orders.process_order", {"order_id": "x", "amount": "-1"})
    assert status == 422, refused


def test_supervisorctl_stop_lets_the_running_task_finish(supervised: Supervised) -> None:
    queue = supervised.project.queues[0]
    log = supervised.logs / f"worker-{queue}.log"
    key = f"warm-stop-{time.time_ns()}"
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from devtools.diagnostics import record_run as t; "
            f"print(t.apply_async(args=[{key!r}, 4.0], queue={queue!r}).id)",
        ],
        cwd=supervised.project.path,
        env=supervised.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    task_id = client.communicate(timeout=60)[0].strip()
    wait_until(lambda: f"record_run {key}: running" in log.read_text(), 30)
    began = time.monotonic()
    stopped = supervised.ctl("stop", f"workers:worker-{queue}")
    took = time.monotonic() - began
    print(f"supervisorctl stop during a 4 s task returned after {took:.1f}s: {stopped.stdout.strip()}")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    text = log.read_text()
    # Warm shutdown: the task ran to the end before the worker exited, and the exit was clean (no SIGKILL).
    assert f"{task_id}" in text and "record_run" in text
    assert any(task_id in line and "SUCCESS" in line for line in text.splitlines()), text[-2000:]
    assert supervised.status()[f"workers:worker-{queue}"] == "STOPPED"
    assert "SIGKILL" not in services.log_tail(supervised.logs / "supervisord.log", 20)
    assert supervised.ctl("start", f"workers:worker-{queue}").returncode == 0
