"""A rendered project installed into this environment and run as real processes: workers via its bin/worker.

The boot tier drives it like a user would: start scripts, the project's own commands, and small producer programs
(tests/support/programs, run by `program`) with the project's environment: each a fresh Python process, as a
producer service would be.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import services
from services import log_tail
from template import render

VENV_BIN = str(Path(sys.executable).parent)
# Producer programs run inside a booted project's environment (real modules, linted with the rest of tests/).
PROGRAMS = Path(__file__).parent / "programs"
# The start of a text-format log line (LOG_FORMAT=text): "[2026-12-02 10:41:06,123: ...".
LOG_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")


@dataclass
class Proc:
    """A process started in its own session, stopped by its process group (and escaped children)."""

    name: str
    popen: subprocess.Popen
    log: Path

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        def logged() -> bool:
            found = text in self.log.read_text(errors="replace")
            assert found or self.popen.poll() is None, self.failure(f"exited before logging {text!r}")
            return found

        services.wait_until(logged, timeout, lambda: self.failure(f"{text!r} not logged"))

    def failure(self, what: str) -> str:
        return f"{self.name}: {what} (exit {self.popen.poll()}):\n{log_tail(self.log)}"

    def count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text)

    def stamps(self, text: str) -> list[float]:
        """Times (epoch seconds) of the text-format log lines containing `text`."""
        times = []
        for line in self.log.read_text(errors="replace").splitlines():
            match = LOG_STAMP.match(line)
            if match and text in line:
                times.append(datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
        return times

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the group (a warm shutdown for Celery), SIGKILL after `timeout`. Returns the exit code."""
        return services.stop_group(self.popen, signal.SIGTERM, timeout)


@dataclass
class BootedProject:
    path: Path
    package: str
    queues: list[str]
    env: dict[str, str]
    logs: Path
    procs: list[Proc] = field(default_factory=list)
    services: list = field(default_factory=list)  # services.Service of the broker(s) it runs against

    def proc(self, name: str) -> Proc:
        """The most recent process started under `name` (e.g. "worker-default")."""
        return next(p for p in reversed(self.procs) if p.name == name)

    def service(self, name: str):
        return next((s for s in self.services if s.name == name), None)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.path,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_worker(self, queue: str, name: str | None = None) -> Proc:
        """Through the generated start script, exactly as supervisor, compose and Kubernetes run it."""
        name = name or queue
        env = {
            "WORKER_QUEUES": queue,
            "WORKER_NAME": name,
            "WORKER_HEARTBEAT_FILE": str(self.logs / f"{name}.heartbeat"),
        }
        return self.start(f"worker-{name}", [str(self.path / "bin" / "worker")], env)

    def run(self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            cwd=self.path,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def program(self, name: str, *args: object, env: dict[str, str] | None = None, timeout: float = 60) -> object:
        """Run tests/support/programs/<name>.py as a producer would: a fresh process with the project's environment.

        Each argument is passed as JSON; the package name in PROJECT_PACKAGE. Returns its last output line as JSON.
        """
        argv = [sys.executable, str(PROGRAMS / f"{name}.py"), *(json.dumps(arg) for arg in args)]
        result = self.run(*argv, env={"PROJECT_PACKAGE": self.package, **(env or {})}, timeout=timeout)
        assert result.returncode == 0, f"program {name} exited {result.returncode}:\n{result.stderr}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    def module(self, module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", f"{self.package}.{module}", *args, env=env)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout=30)


def project_env(path: Path, redis_url: str, broker_url: str | None) -> dict[str, str]:
    env = {
        **os.environ,
        # The venv's celery and python, for bin/worker.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ENVIRONMENT": "development",
        "REDIS_URL": redis_url,
        # This project's root first on sys.path: every rendered project is installed editable into this one venv, and
        # uv's backend puts each project's root on sys.path (a .pth file), so another project's devtools/ would be found
        # first (and its celery_app imported beside this one's). A user's venv holds one project: nothing to do there.
        "PYTHONPATH": str(path),
        # The fault-drill tasks (devtools/, not in the wheel): workers import them only when asked to.
        "CELERY_EXTRA_TASK_MODULES": "devtools.diagnostics",
    }
    if broker_url:
        env["CELERY_BROKER_URL"] = broker_url
    return env


def install(path: Path) -> None:
    """Install the rendered project, editable: proves its pyproject builds. Its dependencies are already in this venv,
    from the lock (tools/bootstrap.sh): --no-deps adds nothing unlocked. uv builds it with its own backend, offline."""
    subprocess.run(
        [
            VENV_BIN + "/uv",
            "pip",
            "install",
            "--quiet",
            "--offline",
            "--no-deps",
            "--python",
            sys.executable,
            "-e",
            str(path),
        ],
        check=True,
    )


def uninstall(dist: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", dist], check=False)


def read_answers(path: Path) -> dict:
    return json.loads((path / ".cookiecutter.json").read_text())["cookiecutter"]


@contextlib.contextmanager
def serving(path: Path, package: str, queues: list[str], broker: str, work: Path) -> Iterator[BootedProject]:
    """Start the broker servers of a rendered project (Redis, plus RabbitMQ on that broker) under `work`; yield it as
    a BootedProject with no process yet; stop what it started afterwards."""
    services.require("redis-server")
    if broker == "rabbitmq":
        services.require("rabbitmq-server")
    started: list[services.Service] = []
    project = None
    try:
        redis = services.start_redis(work / "redis")
        started.append(redis)
        broker_url = None
        if broker == "rabbitmq":
            started.append(services.start_rabbitmq(work / "rabbitmq"))
            broker_url = started[-1].url
        logs = work / "logs"
        logs.mkdir()
        env = project_env(path, redis.url, broker_url)
        project = BootedProject(path, package, queues, env, logs, services=started)
        yield project
    finally:
        if project:
            project.stop_all()
        for service in reversed(started):
            service.stop()


@contextlib.contextmanager
def running_project(work: Path, project_name: str, broker: str, *, workers: bool = True) -> Iterator[BootedProject]:
    """Render a project, install it, start its broker servers (and a `bin/worker` per queue); stop all afterwards.

    Each caller uses its own `project_name`, so several rendered projects can be installed into the one environment.
    """
    services.require("redis-server")
    if broker == "rabbitmq":
        services.require("rabbitmq-server")
    path = render(work, {"project_name": project_name, "broker": broker})
    answers = read_answers(path)
    install(path)
    try:
        queues = [q.strip() for q in answers["queues"].split(",")]
        with serving(path, answers["__package"], queues, broker, work) as project:
            if workers:
                for queue in queues:
                    project.start_worker(queue)
                for proc in project.procs:
                    proc.wait_for_log("ready.")
            yield project
    finally:
        uninstall(answers["project_slug"])


@contextlib.contextmanager
def running_web(project: BootedProject, name: str, token: str) -> Iterator[tuple[Proc, int]]:
    """bin/web on a free port with two workers, as a user starts it, once /readyz answers 200; stopped afterwards."""
    port = services.free_port()
    # The booted env has REDIS_URL (and CELERY_BROKER_URL); the web process needs its own WEB_* values on top.
    env = {"WEB_BIND": f"127.0.0.1:{port}", "WEB_API_TOKEN": token, "WEB_CONCURRENCY": "2"}
    proc = project.start(name, [str(project.path / "bin" / "web")], env=env)

    def ready() -> bool:
        assert proc.popen.poll() is None, f"bin/web exited {proc.popen.returncode}:\n{log_tail(proc.log)}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        services.wait_until(ready, what="bin/web answering /readyz with 200")
        yield proc, port
    finally:
        proc.stop(timeout=60)
