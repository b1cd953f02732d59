"""Test setup: one real redis-server for the whole session{% if cookiecutter.broker == "rabbitmq" %}, a RabbitMQ broker,{% endif %} and workers started with bin/worker.

The servers start in `pytest_configure`, before test modules import the package, because settings are read at import.
Unit tests do not talk to them; integration tests (marked `integration`) do.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent
_servers: list[Any] = []  # devservers.Server objects, stopped at the end


def pytest_configure(config: pytest.Config) -> None:
    from devtools import devservers

    run_dir = Path(os.environ.get("TEST_RUN_DIR", PROJECT / ".run" / f"test-{os.getpid()}"))
    # An existing Redis (TEST_REDIS_URL: CI's service container) is reused; otherwise start one of our own. Not
    # REDIS_URL: a developer's .env points that at their dev Redis, which the tests must leave alone.
    redis_url = os.environ.get("TEST_REDIS_URL")
    if not redis_url:
        redis = devservers.start_redis(run_dir / "redis", devservers.free_port())
        _servers.append(redis)
        redis_url = redis.url
    os.environ["REDIS_URL"] = redis_url
{%- if cookiecutter.broker == "rabbitmq" %}
    # An existing broker (TEST_BROKER_URL) is reused; otherwise start a node of our own (about 5-10 s).
    broker_url = os.environ.get("TEST_BROKER_URL")
    if not broker_url:
        rabbit = devservers.start_rabbitmq(run_dir / "rabbitmq", devservers.free_port(), "test", "test")
        _servers.append(rabbit)
        broker_url = rabbit.url
    os.environ["CELERY_BROKER_URL"] = broker_url
{%- else %}
    os.environ.pop("CELERY_BROKER_URL", None)  # the broker is the test Redis
{%- endif %}
    os.environ.pop("CELERY_RESULT_BACKEND", None)
    os.environ["CELERY_KEY_PREFIX"] = f"test{os.getpid()}"
    os.environ["ENVIRONMENT"] = "development"


def pytest_unconfigure(config: pytest.Config) -> None:
    # AsyncResult finalizers unsubscribe from Redis at interpreter exit; with the server gone that prints a
    # reconnect error. Forget the subscriptions first.
    if "{{ cookiecutter.__package }}.celery_app" in sys.modules:
        consumer = sys.modules["{{ cookiecutter.__package }}.celery_app"].app.backend.result_consumer
        consumer.stop()
        consumer.subscribed_to.clear()
    for server in reversed(_servers):
        server.stop()


class Worker:
    """A real worker process started through bin/worker, as every deployment starts it."""

    def __init__(self, queue: str, tmp: Path, name: str | None = None) -> None:
        self.queue = queue
        self.log = tmp / f"worker-{queue}.log"
        self.heartbeat = tmp / f"worker-{queue}.heartbeat"
        self.env = {
            **os.environ,
            "WORKER_QUEUES": queue,
            # Node names must be unique per broker (RabbitMQ locks each node's control queue).
            "WORKER_NAME": f"{name or queue}-test{os.getpid()}",
            "WORKER_HEARTBEAT_FILE": str(self.heartbeat),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(PROJECT / "bin" / "worker")],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.queue} exited {self.proc.returncode}:\n{self.log.read_text()}")
            # "ready" is logged once the consumer is connected and consuming.
            if "ready." in self.log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.queue} not ready in {timeout}s:\n{self.log.read_text()}")

    def health(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "{{ cookiecutter.__package }}.health", "worker"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    from {{ cookiecutter.__package }}.config.settings import settings

    tmp = tmp_path_factory.mktemp("workers")
    started = {queue: Worker(queue, tmp) for queue in settings.queues}
    try:
        for worker in started.values():
            worker.wait_ready()
        yield started
    finally:
        for worker in started.values():
            worker.stop()


@pytest.fixture
def own_worker(tmp_path: Path) -> Iterator[Worker]:
    """A worker of the test's own, for tests that stop it."""
    from {{ cookiecutter.__package }}.config.settings import settings

    worker = Worker(settings.queues[0], tmp_path, name="own")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The dead-letter store on fakeredis, for unit tests (imported here: settings are read at import, after
    pytest_configure has set the environment)."""
    import fakeredis

    from {{ cookiecutter.__package }}.runtime import deadletters, redis_store

    fake = fakeredis.FakeRedis(decode_responses=True)
    monkeypatch.setattr(deadletters, "client", lambda: fake)
    # The task base class and the signal handlers reach Redis through redis_store (the poison-message counters).
    monkeypatch.setattr(redis_store, "client", lambda: fake)
    yield fake
