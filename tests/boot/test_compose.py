"""Compose boot tier: the generated Dockerfile and compose.yaml, built and run by a real Docker engine.

Per broker: render the project, build its image through `docker compose build`, `docker compose up --wait`, then use
the stack as a developer would: a task routed to each queue runs on that queue's worker, beat fires, Flower wants its
password, the web app enqueues a task, the exporter answers a scrape, and `docker compose stop` of a worker lets its
running task finish. `down -v` always runs at the end.

The user's compose.yaml runs unchanged; a generated override only adapts it to this machine's engine
(docker_env.machine_override). No registry is needed (docker_env.ensure_images). Each phase's time is printed.
"""

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker_env
import pytest
import services
from booted import read_answers
from services import wait_until
from template import CHOICES, render

pytestmark = pytest.mark.boot
ORDER = {"order_id": "o-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}
# The stop test's task runs this long; `docker compose stop` is sent while it runs.
SLOW_TASK_SECONDS = 8
SENT = "Sending due task refresh-eurusd"
# The image as built (what CI and production run); and with the dev override that `docker compose up` adds by itself.
USER_FILES = ("compose.yaml",)
DEV_FILES = ("compose.yaml", "compose.override.yaml")


def report(config: pytest.Config, line: str) -> None:
    """Print past pytest's output capture, so the figures show without -s."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@dataclass
class Stack:
    path: Path
    package: str
    queues: list[str]
    project_name: str
    machine: Path  # the override adapting the user's files to this machine's engine
    env: dict[str, str]
    ports: dict[str, int]
    dotenv: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return docker_env.run([*self.argv(), *args], env=self.env, cwd=self.path, timeout=timeout)

    def argv(self, files: tuple[str, ...] = USER_FILES) -> list[str]:
        names = [arg for name in (*files, str(self.machine)) for arg in ("-f", name)]
        return [*docker_env.compose_command(), "-p", self.project_name, *names]

    def down(self) -> tuple[subprocess.CompletedProcess, dict[str, float]]:
        """`down -v`, timing each container's stop from compose's progress lines: who, if anyone, stopped slowly."""
        argv = [*self.argv(), "down", "--volumes", "--remove-orphans", "--timeout", "30"]
        started, slow, lines = time.monotonic(), {}, []
        with subprocess.Popen(
            argv, cwd=self.path, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as proc:
            for line in proc.stdout:
                lines.append(line)
                words, seconds = line.split(), time.monotonic() - started
                if len(words) == 3 and words[0] == "Container" and words[2] == "Stopped" and seconds > 15:
                    slow[words[1]] = seconds
        return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines), ""), slow

    def logs(self, service: str) -> str:
        return docker_env.must(self.compose("logs", "--no-color", "--no-log-prefix", service)).stdout

    def client(self, code: str, service: str = "beat") -> Any:
        """Run `code` in a running app container (its Python, the stack's settings); its last line is JSON."""
        program = f"import json\nimport {self.package} as pkg\n{code}"
        result = docker_env.must(self.compose("exec", "-T", service, "python", "-c", program, timeout=120))
        return json.loads(result.stdout.strip().splitlines()[-1])

    def http(self, port: str, path: str, *, method: str = "GET", headers: dict | None = None, body: Any = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports[port]}{path}", data=data, method=method, headers=headers or {}
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> Iterator[tuple[docker_env.Engine, dict[str, str]]]:
    with docker_env.engine_lock():
        started = time.monotonic()
        engine = docker_env.start_engine()
        try:
            engine_ready = time.monotonic()
            images = docker_env.ensure_images(engine)
            source = ", ".join(images.values()) or "the compose files' defaults, from the registry"
            figures = f"engine {engine_ready - started:.1f}s, base images {time.monotonic() - engine_ready:.1f}s"
            report(request.config, f"\ncompose tier: {figures} ({source})")
            yield engine, images
        finally:
            engine.prune()
            engine.stop()


@pytest.fixture(scope="module", params=CHOICES["broker"], ids=lambda broker: f"broker={broker}")
def stack(
    request: pytest.FixtureRequest, engine: tuple[docker_env.Engine, dict[str, str]], tmp_path_factory
) -> Iterator[Stack]:
    engine_, images = engine
    broker = request.param
    path = render(tmp_path_factory.mktemp(f"compose-{broker}"), {"project_name": f"Compose {broker}", "broker": broker})
    answers = read_answers(path)
    # Beat's price refresh every 2 s instead of 60 (the containers read .env through env_file).
    with (path / ".env").open("a") as env_file:
        env_file.write("CELERY_PRICE_REFRESH_SECONDS=2\n")
    ports = {
        name: services.free_port() for name in ("FLOWER_PORT", "WEB_PORT", "METRICS_PORT", "RABBITMQ_MANAGEMENT_PORT")
    }
    env = {**engine_.env, **images, **{name: str(port) for name, port in ports.items()}}
    # Built from the files with the dev override, so it covers the services of both.
    config = json.loads(docker_env.must(docker_env.compose_config(path, *DEV_FILES, env=env)).stdout)
    machine = path.parent / "compose.machine.json"
    override = docker_env.machine_override(config, engine_)
    # The fault-drill tasks (devtools/, never in the image): mounted into the workers and beat (where the test's
    # programs run), and loaded through the project's opt-in CELERY_EXTRA_TASK_MODULES.
    for name in config["services"]:
        if name == "beat" or name.startswith("worker-"):
            drills = override["services"].setdefault(name, {})
            drills["volumes"] = [f"{path / 'devtools'}:/app/devtools:ro"]
            drills["environment"] = {"CELERY_EXTRA_TASK_MODULES": "devtools.diagnostics"}
    docker_env.write_json(machine, override)
    dotenv = dict(
        line.split("=", 1) for line in (path / ".env").read_text().splitlines() if "=" in line and line[0] != "#"
    )
    queues = [q.strip() for q in answers["queues"].split(",")]
    stack = Stack(path, answers["__package"], queues, answers["project_slug"], machine, env, ports, dotenv)
    try:
        started = time.monotonic()
        # One build: every app service runs this image (compose would otherwise build it once per service).
        docker_env.must(stack.compose("build", f"worker-{queues[0]}", timeout=900))
        stack.timings["build"] = time.monotonic() - started
        started = time.monotonic()
        up = stack.compose("up", "--detach", "--wait", "--wait-timeout", "240", "--no-build", timeout=400)
        stack.timings["up --wait"] = time.monotonic() - started
        if up.returncode != 0:
            status = stack.compose("ps", "--all").stdout
            logs = stack.compose("logs", "--no-color", "--tail", "30").stdout
            pytest.fail(
                f"docker compose up --wait failed:\n{up.stderr[-3000:]}\n{status}\n{logs[-6000:]}", pytrace=False
            )
        checks_started = time.monotonic()
        yield stack
        stack.timings["checks"] = time.monotonic() - checks_started
    finally:
        started = time.monotonic()
        # Always: containers, the network and the data volumes. --timeout bounds the wait if something hangs.
        down, slow = stack.down()
        stack.timings["down -v"] = time.monotonic() - started
        figures = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in stack.timings.items())
        if slow:
            figures += " (slow to stop: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in slow.items()) + ")"
        report(request.config, f"\ncompose tier broker={broker}: {figures}")
        assert down.returncode == 0, down.stdout


def test_image_runs_as_non_root_without_secrets_baked_in(stack: Stack) -> None:
    assert docker_env.must(stack.compose("exec", "-T", "beat", "id", "-u")).stdout.strip() == "10001"
    # .dockerignore kept .env (and everything not allow-listed) out of the image; settings come from env_file.
    listing = docker_env.must(stack.compose("exec", "-T", "beat", "ls", "-A", "/app")).stdout.split()
    assert ".env" not in listing and "tests" not in listing, listing


def test_each_queue_runs_its_routed_tasks_on_its_own_worker(stack: Stack) -> None:
    sent = stack.client(
        f"""
from {stack.package}.celery_app import app
from {stack.package}.tasks import notifications, orders, prices
sent = {{}}
for task, args in [(orders.process_order, [{ORDER!r}]), (notifications.send_receipt, ["compose-route"]),
                   (prices.fetch_price, ["EURUSD"])]:
    result = task.delay(*args)  # no queue given: task_routes decides
    result.get(timeout=60)
    sent[result.id] = app.amqp.router.route({{}}, task.name)["queue"].name
print(json.dumps(sent))
"""
    )
    assert sorted(set(sent.values())) == sorted(stack.queues), "every queue should have a routed example task"
    logs = {queue: stack.logs(f"worker-{queue}") for queue in stack.queues}
    for task_id, queue in sent.items():
        assert f"[{task_id}] succeeded" in logs[queue], f"{task_id} did not run on worker-{queue}"
        others = [q for q in stack.queues if q != queue and task_id in logs[q]]
        assert others == [], f"task {task_id} for {queue} also reached {others}"


def test_beat_fires_and_its_task_runs(stack: Stack) -> None:
    queue = stack.client(
        f"""
from {stack.package}.config.schedule import ENTRIES
print(json.dumps(next(e.queue for e in ENTRIES if e.name == "refresh-eurusd")))
"""
    )

    def price_runs() -> int:
        log = stack.logs(f"worker-{queue}")
        return sum(1 for line in log.splitlines() if "fetch_price[" in line and "] succeeded" in line)

    before = price_runs()
    wait_until(lambda: price_runs() >= before + 2, what="two beat-sent price refreshes run", timeout=60)
    assert stack.logs("beat").count(SENT) >= 2


def test_flower_wants_its_password(stack: Stack) -> None:
    assert stack.http("FLOWER_PORT", "/")[0] == 401
    credentials = base64.b64encode(stack.dotenv["FLOWER_BASIC_AUTH"].encode()).decode()
    assert stack.http("FLOWER_PORT", "/", headers={"Authorization": f"Basic {credentials}"})[0] == 200


def test_web_app_enqueues_a_task_that_runs(stack: Stack) -> None:
    token = {"Authorization": f"Bearer {stack.dotenv['WEB_API_TOKEN']}"}
    payload = {"order_id": f"web-{uuid.uuid4().hex[:8]}"}
    assert stack.http("WEB_PORT", "/tasks/notifications.send_receipt", method="POST", body=payload)[0] == 401
    status, body = stack.http(
        "WEB_PORT", "/tasks/notifications.send_receipt", method="POST", body=payload, headers=token
    )
    assert status == 202, body
    accepted = json.loads(body)
    path = accepted["status_url"].split(f":{stack.ports['WEB_PORT']}", 1)[1]

    def finished() -> dict | None:
        state = json.loads(stack.http("WEB_PORT", path, headers=token)[1])
        return state if state["state"] in ("SUCCESS", "FAILURE") else None

    assert wait_until(finished, what="the web-enqueued task finishing", timeout=60)["state"] == "SUCCESS"
    assert f"[{accepted['task_id']}] succeeded" in stack.logs(f"worker-{accepted['queue']}")


def test_metrics_exporter_answers_a_scrape(stack: Stack) -> None:
    status, body = stack.http("METRICS_PORT", "/metrics")
    assert status == 200
    assert f"{stack.package}_exporter_broker_up 1.0" in body
    for queue in stack.queues:
        assert f'{stack.package}_queue_depth{{queue="{queue}"}}' in body


def test_compose_stop_lets_a_running_task_finish(stack: Stack) -> None:
    """Last in this module: it stops the default queue's worker."""
    key = f"stop-{uuid.uuid4().hex[:8]}"
    task_id = stack.client(
        f"""
from devtools.diagnostics import record_run
print(json.dumps(record_run.delay("{key}", {SLOW_TASK_SECONDS}).id))
"""
    )
    worker = f"worker-{stack.queues[0]}"
    wait_until(lambda: f"record_run {key}: running" in stack.logs(worker), what="the slow task starting")
    started = time.monotonic()
    docker_env.must(stack.compose("stop", worker, timeout=400))
    waited = time.monotonic() - started
    print(f"docker compose stop waited {waited:.1f}s for a {SLOW_TASK_SECONDS}s task")
    listed = json.loads(
        docker_env.must(stack.compose("ps", "--all", "--format", "json", worker)).stdout.splitlines()[0]
    )
    state = listed[0] if isinstance(listed, list) else listed  # a JSON array before Compose 2.21, then one per line
    assert state["State"] == "exited" and state["ExitCode"] == 0, state
    assert f"[{task_id}] succeeded" in stack.logs(worker), "the running task did not finish before the worker exited"
    runs = stack.client(
        f"""
from {stack.package}.celery_app import app
from {stack.package}.runtime.redis_store import client
from devtools.diagnostics import runs_key
runs = [json.loads(raw)["key"] for raw in client().lrange(runs_key(), 0, -1)]
print(json.dumps([runs.count("{key}"), app.AsyncResult("{task_id}").state]))
"""
    )
    assert runs == [1, "SUCCESS"]


@pytest.mark.parametrize("stack", ["redis"], ids=["broker=redis"], indirect=True)
def test_dev_override_mounts_the_code_and_restarts_a_worker_when_it_changes(stack: Stack) -> None:
    """One broker is enough: the override does not depend on it. Runs after the tests above (their stack is reused)."""
    worker = f"worker-{stack.queues[0]}"
    dev = stack.argv(DEV_FILES)
    started = time.monotonic()
    docker_env.must(docker_env.run([*dev, "build", worker], env=stack.env, cwd=stack.path, timeout=900))
    up = docker_env.run([*dev, "up", "--detach", "--wait", "--no-build"], env=stack.env, cwd=stack.path, timeout=400)
    assert up.returncode == 0, up.stderr[-3000:]
    print(f"dev override: build and up --wait in {time.monotonic() - started:.1f}s")
    denied = stack.compose("exec", "-T", worker, "touch", f"/app/{stack.package}/written-by-a-container")
    assert denied.returncode != 0, "the bind-mounted code must be read-only inside the containers"
    with (stack.path / stack.package / "tasks" / "orders.py").open("a") as source:
        source.write("# edited while the stack runs\n")
    # watchfiles sees the change, stops the worker warmly and starts it again.
    wait_until(lambda: stack.logs(worker).count(" ready.") >= 2, what="the worker restarting after the edit")
    assert "change detected" in stack.logs(worker)
    result = stack.client(
        f"""
from {stack.package}.tasks.orders import process_order
print(json.dumps(process_order.delay({ORDER!r}).get(timeout=60)["status"]))
"""
    )
    assert result == "accepted"
