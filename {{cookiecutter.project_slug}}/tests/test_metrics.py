"""The Prometheus exporter: events turned into counters (no broker), then live against real workers (bin/metrics)."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from {{ cookiecutter.__package }} import metrics
from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.devservers import free_port
from {{ cookiecutter.__package }}.tasks.orders import process_order
from {{ cookiecutter.__package }}.tasks.prices import fetch_price

P = metrics.PREFIX
FETCH = fetch_price.name
FETCH_QUEUE = app.amqp.router.route({}, FETCH)["queue"].name
PROJECT = Path(__file__).resolve().parent.parent
TIMEOUT = 30


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> metrics.Exporter:
    monkeypatch.setattr(metrics, "queue_depths", lambda app: {"a": 3, "b": 0})
    return metrics.Exporter(app, registry=CollectorRegistry())


def value(exporter: metrics.Exporter, name: str, **labels: str) -> float | None:
    return exporter.registry.get_sample_value(f"{P}_{name}", labels)


def test_a_success_counts_with_its_runtime_by_task_and_routed_queue(exporter: metrics.Exporter) -> None:
    exporter.on_event({"type": "task-received", "uuid": "t1", "name": FETCH})
    exporter.on_event({"type": "task-succeeded", "uuid": "t1", "runtime": 0.25})
    labels = {"task": FETCH, "queue": FETCH_QUEUE}
    assert value(exporter, "task_succeeded_total", **labels) == 1
    assert value(exporter, "task_runtime_seconds_count", **labels) == 1
    assert value(exporter, "task_runtime_seconds_sum", **labels) == 0.25
    assert value(exporter, "task_runtime_seconds_bucket", le="0.5", **labels) == 1
    assert value(exporter, "exporter_events_received_total") == 2


def test_retries_and_final_failures_are_counted_apart(exporter: metrics.Exporter) -> None:
    for kind in ("task-received", "task-retried", "task-received", "task-failed"):
        exporter.on_event({"type": kind, "uuid": "t2", "name": FETCH})
    labels = {"task": FETCH, "queue": FETCH_QUEUE}
    assert value(exporter, "task_retried_total", **labels) == 1
    assert value(exporter, "task_failed_total", **labels) == 1
    assert value(exporter, "task_succeeded_total", **labels) is None


def test_a_task_received_before_the_exporter_started_counts_as_unknown(exporter: metrics.Exporter) -> None:
    exporter.on_event({"type": "task-succeeded", "uuid": "never-seen", "runtime": 1.0})
    assert value(exporter, "task_succeeded_total", task="unknown", queue="unknown") == 1


def test_worker_heartbeats_count_as_events_only(exporter: metrics.Exporter) -> None:
    exporter.on_event({"type": "worker-heartbeat", "hostname": "w@h"})
    assert value(exporter, "exporter_events_received_total") == 1
    assert "task_succeeded_total{" not in generate_latest(exporter.registry).decode()


def test_queue_depth_is_read_at_scrape_and_a_broker_error_is_a_sample(
    exporter: metrics.Exporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert value(exporter, "queue_depth", queue="a") == 3
    assert value(exporter, "exporter_broker_up") == 1

    def down(app: object) -> dict[str, int]:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(metrics, "queue_depths", down)
    assert value(exporter, "queue_depth", queue="a") is None
    assert value(exporter, "exporter_broker_up") == 0


def test_metric_names_follow_prometheus_conventions(exporter: metrics.Exporter) -> None:
    exporter.on_event({"type": "task-succeeded", "uuid": "x", "runtime": 0.1})
    names = {sample.name for family in exporter.registry.collect() for sample in family.samples}
    assert all(name.startswith(f"{P}_") for name in names), names
    assert f"{P}_task_runtime_seconds_bucket" in names and f"{P}_task_succeeded_total" in names


# --- live: bin/metrics against the test broker and the session's workers ---------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(port: int, name: str, **labels: str) -> float:
    try:
        return scrape(port).get((f"{P}_{name}", tuple(sorted(labels.items()))), 0.0)
    except OSError:  # not listening yet
        return -1.0


def wait_for(predicate, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met within {timeout}s"
        time.sleep(0.2)


def ops_queues() -> dict[str, int]:
    """`ops queues` as an operator runs it: queue name -> ready messages."""
    argv = [sys.executable, "-m", f"{P}.ops", "queues"]
    listing = subprocess.run(argv, cwd=PROJECT, capture_output=True, text=True, check=False)
    assert listing.returncode == 0, listing.stderr
    return {name: int(count) for name, count in (line.split() for line in listing.stdout.splitlines()[1:])}


@pytest.mark.integration
def test_exporter_counts_tasks_and_reports_the_depth_of_an_unconsumed_queue(workers, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "METRICS_PORT": str(port),
        # bin/metrics runs `python` from PATH: this interpreter's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log = tmp_path / "metrics.log"
    with log.open("wb") as out:
        exporter = subprocess.Popen(["bin/metrics"], cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT)
    fetch = {"task": FETCH, "queue": FETCH_QUEUE}
    order = {"task": process_order.name, "queue": app.amqp.router.route({}, process_order.name)["queue"].name}
    try:
        # An event arrived (workers send a heartbeat every 2 s): the exporter's event queue is bound, none is missed.
        wait_for(lambda: sample(port, "exporter_events_received_total") > 0, what="first event")
        runs = sample(port, "task_succeeded_total", **fetch)
        timed = sample(port, "task_runtime_seconds_count", **fetch)
        failed = sample(port, "task_failed_total", **order)
        for _ in range(3):
            fetch_price.delay("EURUSD").get(timeout=TIMEOUT)
        with pytest.raises(Exception, match="invalid Order"):
            process_order.delay({"order_id": "o-m"}).get(timeout=TIMEOUT)
        wait_for(lambda: sample(port, "task_succeeded_total", **fetch) >= runs + 3, what="successes counted")
        wait_for(lambda: sample(port, "task_runtime_seconds_count", **fetch) >= timed + 3, what="runtimes observed")
        wait_for(lambda: sample(port, "task_failed_total", **order) >= failed + 1, what="failure counted")

        # A queue nobody consumes still reports its depth: stop its worker, publish, read; a new worker takes over.
        assert workers[FETCH_QUEUE].stop() == 0
        waiting = [fetch_price.delay("GBPUSD") for _ in range(3)]
        wait_for(lambda: sample(port, "queue_depth", queue=FETCH_QUEUE) == 3, what="depth of 3 reported")
        assert ops_queues()[FETCH_QUEUE] == 3
        assert sample(port, "exporter_broker_up") == 1
    finally:
        if workers[FETCH_QUEUE].proc.poll() is not None:
            # The session fixture stops whatever its dict holds at the end, so the new worker is stopped too.
            workers[FETCH_QUEUE] = type(workers[FETCH_QUEUE])(FETCH_QUEUE, tmp_path)
            workers[FETCH_QUEUE].wait_ready()
        exporter.terminate()
        assert exporter.wait(timeout=TIMEOUT) == 0, log.read_text()
    assert [result.get(timeout=TIMEOUT) for result in waiting], "the new worker runs what waited"
