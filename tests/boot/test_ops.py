"""Boot tier for the operations surface: the exporter (bin/metrics) and the ops CLI, per broker.

Two kinds of stack:
- the session's `booted` stack (a worker per queue): task counters and runtimes move as tasks run there, and
  `ops queues` / `ops workers` list every queue and worker. Nothing here stops its workers or its broker.
- a private broker (module fixture `idle`) with no worker at all, shared with nobody: the project's processes are
  pointed at it with CELERY_BROKER_URL (results stay in the booted Redis). Only there can a queue hold messages
  that no worker takes, so its depth is exact; and only there may a test crash the broker (as test_faults.py does on
  its own stack) to show the exporter reporting it and reading again.
  Why not a queue of the booted stack: every declared queue has a worker, and stopping or pausing one would race the
  other modules that read those workers' logs. An extra declared queue is not possible without editing queues.py
  (settings require a profile for every queue).
"""

import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import services
from booted import BootedProject, Proc
from prometheus_client.parser import text_string_to_metric_families
from services import wait_until

pytestmark = pytest.mark.boot
ORDER = {"order_id": "o-1", "amount": "19.99", "currency": "EUR", "email": "a@example.com"}


@dataclass
class Idle:
    service: services.Service
    env: dict[str, str]  # points the project's processes at this broker


@pytest.fixture(scope="module")
def idle(booted: BootedProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idle]:
    work = tmp_path_factory.mktemp("idle-broker")
    service = services.start_rabbitmq(work) if booted.service("rabbitmq") else services.start_redis(work)
    try:
        yield Idle(service, {"CELERY_BROKER_URL": service.url})
    finally:
        service.stop()


@pytest.fixture
def exporters(stopped_afterwards: list[Proc]) -> list[Proc]:
    """Exporters started by a test; stopped afterwards whatever happened."""
    return stopped_afterwards


def scrape(port: int) -> dict[tuple[str, tuple], float] | None:
    """Every sample by (name, labels); None while the exporter does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=15) as response:
            text = response.read().decode()
    except OSError:
        return None
    families = text_string_to_metric_families(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}


class Exporter:
    def __init__(self, booted: BootedProject, proc: Proc, port: int) -> None:
        self.prefix, self.proc, self.port = booted.package, proc, port

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a series not exported yet (a counter no task has touched yet)."""
        samples = scrape(self.port)
        assert samples is not None, f"exporter stopped answering:\n{services.log_tail(self.proc.log)}"
        return samples.get((f"{self.prefix}_{name}", tuple(sorted(labels.items()))), 0.0)


def start_metrics(booted: BootedProject, started: list[Proc], name: str, env: dict[str, str] | None = None) -> Exporter:
    port = services.free_port()
    proc = booted.start(name, ["bin/metrics"], env={"METRICS_PORT": str(port), **(env or {})})
    started.append(proc)
    wait_until(lambda: scrape(port) is not None or proc.popen.poll() is not None, 60, f"{name} answering")
    assert proc.popen.poll() is None, services.log_tail(proc.log)
    return Exporter(booted, proc, port)


def routes(booted: BootedProject) -> dict[str, str]:
    """Example task name -> the queue the project's router sends it to."""
    return booted.program("example_routes")


def publish(booted: BootedProject, env: dict[str, str], prices: int = 0, orders: int = 0) -> None:
    """Send routed example tasks without waiting for them (nobody may consume them)."""
    booted.program("send_examples", prices, orders, ORDER, env=env)


def ops_queues(booted: BootedProject, env: dict[str, str] | None = None) -> dict[str, int]:
    listing = booted.module("ops", "queues", env=env)
    assert listing.returncode == 0, listing.stderr
    print(listing.stdout)
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["queue", "ready"]
    return {name: int(count) for name, count in (row.split() for row in rows)}


def expected_queues(booted: BootedProject) -> list[str]:
    # RabbitMQ variants also list the "<queue>.dead" queues the broker dead-letters into.
    dead = [f"{queue}.dead" for queue in booted.queues] if booted.service("rabbitmq") else []
    return booted.queues + dead


def test_exporter_counts_successes_and_runtimes_per_task_and_queue(
    booted: BootedProject, exporters: list[Proc]
) -> None:
    exporter = start_metrics(booted, exporters, "metrics")
    assert exporter.value("exporter_redis_up") == 1
    routed = routes(booted)
    assert sorted(set(routed.values())) == sorted(booted.queues), "an example task per queue"

    def counts() -> dict[str, tuple[float, float]]:
        return {
            task: (
                exporter.value("task_succeeded_total", task=task, queue=queue),
                exporter.value("task_runtime_seconds_count", task=task, queue=queue),
            )
            for task, queue in routed.items()
        }

    before = counts()
    booted.program("run_examples", 3, ORDER)
    wait_until(
        lambda: all(now[0] >= before[t][0] + 3 and now[1] >= before[t][1] + 3 for t, now in counts().items()),
        what="3 more successes and runtimes per task",
    )
    print({f"{task} ({routed[task]})": now for task, now in counts().items()})
    assert exporter.value("exporter_broker_up") == 1
    assert exporter.proc.stop() == 0, "SIGTERM should be a clean exit"


def test_ops_lists_every_queue_with_its_depth_and_every_worker(booted: BootedProject) -> None:
    assert list(ops_queues(booted)) == expected_queues(booted)
    workers = booted.module("ops", "workers", "--timeout", "5")
    assert workers.returncode == 0, workers.stderr
    print(workers.stdout)
    for queue in booted.queues:  # bin/worker names each node after its queue
        line = next((line for line in workers.stdout.splitlines() if line.startswith(f"{queue}@")), "")
        assert " ok  pool=prefork concurrency=1 prefetch=" in line, workers.stdout


def test_queues_nobody_consumes_report_their_depth_and_can_be_purged(
    booted: BootedProject, idle: Idle, exporters: list[Proc]
) -> None:
    routed = routes(booted)
    prices_queue, orders_queue = routed[f"{booted.package}.tasks.prices.fetch_price"], booted.queues[0]
    publish(booted, idle.env, prices=3, orders=2)
    exporter = start_metrics(booted, exporters, "metrics-idle", idle.env)
    depths = {queue: 0 for queue in expected_queues(booted)} | {prices_queue: 3, orders_queue: 2}
    # Queues never declared on this broker (no worker, no publisher) report 0 rather than disappearing.
    for queue, depth in depths.items():
        assert exporter.value("queue_depth", queue=queue) == depth, queue
    assert exporter.value("exporter_broker_up") == 1
    assert ops_queues(booted, idle.env) == depths

    nobody = booted.module("ops", "workers", "--timeout", "1", env=idle.env)
    assert nobody.returncode == 1 and nobody.stderr.startswith("error: no workers replied within 1.0s"), nobody.stderr
    for queue in (orders_queue, prices_queue):
        purged = booted.module("ops", "purge", queue, "--yes", env=idle.env)
        assert purged.returncode == 0 and f"purged {depths[queue]} message(s) from {queue!r}" in purged.stdout
    assert exporter.value("queue_depth", queue=prices_queue) == 0
    assert exporter.proc.stop() == 0


def test_exporter_survives_a_broker_crash_and_counts_after_it(
    booted: BootedProject, idle: Idle, exporters: list[Proc]
) -> None:
    prices_task = f"{booted.package}.tasks.prices.fetch_price"
    queue = routes(booted)[prices_task]
    exporter = start_metrics(booted, exporters, "metrics-crash", idle.env)
    assert exporter.value("exporter_broker_up") == 1

    idle.service.kill()  # SIGKILL: a crash
    # The exporter keeps answering scrapes and says what it cannot see; the counters live in Redis, still up.
    wait_until(lambda: exporter.value("exporter_broker_up") == 0, what="broker loss reported")
    assert exporter.value("exporter_redis_up") == 1
    started = time.monotonic()
    idle.service.restart()  # same port and data
    wait_until(lambda: exporter.value("exporter_broker_up") == 1, 90, "broker read again")
    print(f"exporter read the broker again {time.monotonic() - started:.1f}s after its restart began")

    def counted() -> tuple[float, float]:
        return (
            exporter.value("task_succeeded_total", task=prices_task, queue=queue),
            exporter.value("task_runtime_seconds_count", task=prices_task, queue=queue),
        )

    before = counted()  # cluster-wide counters: the session's workers have run this task already
    publish(booted, idle.env, prices=3)
    wait_until(lambda: exporter.value("queue_depth", queue=queue) == 3, what="depth read after the restart")
    worker = booted.start(
        f"worker-idle-{queue}",
        [str(booted.path / "bin" / "worker")],
        {**idle.env, "WORKER_QUEUES": queue, "WORKER_NAME": f"idle-{queue}",
         "WORKER_HEARTBEAT_FILE": str(booted.logs / f"idle-{queue}.heartbeat")},
    )  # fmt: skip
    try:
        wait_until(
            lambda: all(now >= then + 3 for now, then in zip(counted(), before, strict=True)),
            what="tasks run after the restart counted",
        )
        assert exporter.value("queue_depth", queue=queue) == 0
    finally:
        assert worker.stop() == 0
    assert exporter.proc.stop() == 0
    assert "queue depth read failed" in exporter.proc.log.read_text()
