"""The Prometheus exporter: task counters in the test Redis read back as metrics, then bin/metrics live against real
workers."""

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from {{ cookiecutter.__package }} import metrics
from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.config.settings import settings
from {{ cookiecutter.__package }}.runtime import counters as task_counters
from {{ cookiecutter.__package }}.runtime import deadletters, external
from {{ cookiecutter.__package }}.runtime.redis_store import client
from {{ cookiecutter.__package }}.tasks.orders import process_order
from {{ cookiecutter.__package }}.tasks.prices import fetch_price

from devtools.devservers import free_port

P = metrics.PREFIX
FETCH = fetch_price.name
FETCH_QUEUE = app.amqp.router.route({}, FETCH)["queue"].name
PROJECT = Path(__file__).resolve().parent.parent
TIMEOUT = 30


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> CollectorRegistry:
    monkeypatch.setattr(metrics, "queue_depths", lambda app: {"a": 3, "b": 0})
    monkeypatch.setattr(metrics, "_failed_at", {})  # no Redis failure left over from another test
    client().delete(task_counters.KEY)  # unit tests start from no counters; the live test reads differences
    return metrics.register(app, CollectorRegistry())


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(f"{P}_{name}", labels)


def test_a_success_counts_with_its_runtime_by_task_and_queue(registry: CollectorRegistry) -> None:
    fetch_price.apply(args=("EURUSD",))  # eager: the same signals as in a worker, with no queue ("eager")
    labels = {"task": FETCH, "queue": "eager"}
    assert value(registry, "task_succeeded_total", **labels) == 1
    assert value(registry, "task_runtime_seconds_count", **labels) == 1
    assert value(registry, "task_runtime_seconds_bucket", le="300.0", **labels) == 1
    assert 0 < (value(registry, "task_runtime_seconds_sum", **labels) or 0) < 300
    assert value(registry, "exporter_redis_up") == 1


def test_buckets_add_up_to_prometheus_cumulative_ones(registry: CollectorRegistry) -> None:
    for seconds in (0.004, 0.2, 0.2, 7.0, 400.0):
        client().hincrby(task_counters.KEY, task_counters.field(f"le={task_counters.bucket(seconds)}", "t", "q"), 1)
    buckets = {
        le: value(registry, "task_runtime_seconds_bucket", task="t", queue="q", le=le)
        for le in ("0.01", "0.1", "0.25", "10.0", "300.0", "+Inf")
    }
    assert buckets == {"0.01": 1, "0.1": 1, "0.25": 3, "10.0": 4, "300.0": 4, "+Inf": 5}


def test_final_failures_and_retries_are_counted_apart(registry: CollectorRegistry) -> None:
    process_order.apply(args=({"order_id": "o-u"},))  # invalid payload: fails for good
    task_counters.record(FETCH, None, "RETRY", 0.1)  # what a run that retries ends with
    assert value(registry, "task_failed_total", task=process_order.name, queue="eager") == 1
    assert value(registry, "task_retried_total", task=FETCH, queue="eager") == 1
    # 0, not absent: every pair has all three counters, so sums and ratios across outcomes keep it.
    assert value(registry, "task_succeeded_total", task=process_order.name, queue="eager") == 0


def test_redis_away_neither_fails_the_task_nor_the_scrape(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=1)
    monkeypatch.setattr(task_counters, "client", lambda: nowhere)
    monkeypatch.setattr(task_counters, "_warned_at", -task_counters.WARN_EVERY)
    with caplog.at_level(logging.WARNING):
        assert fetch_price.apply(args=("EURUSD",)).successful()
    assert "task counters not updated" in caplog.text
    assert value(registry, "exporter_redis_up") == 0
    assert value(registry, "task_succeeded_total", task=FETCH, queue="eager") is None


def test_a_hung_redis_costs_one_read_timeout_per_scrape(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections accepted, never answered: the first read waits out its timeout, the other collectors skip that
    Redis, so the scrape answers (redis_up 0) within Prometheus's scrape timeout."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # the kernel completes the handshakes; nobody ever reads
        no_retry = Retry(NoBackoff(), 0)
        slow = redis.Redis(port=hung.getsockname()[1], socket_connect_timeout=1, socket_timeout=1, retry=no_retry)
        for module in (task_counters, deadletters, external):
            monkeypatch.setattr(module, "client" if module is not external else "_redis", lambda: slow)
        monkeypatch.setattr(metrics.BeatLockCollector, "redis", lambda self: slow)
        started = time.monotonic()
        assert value(registry, "exporter_redis_up") == 0
        took = time.monotonic() - started
    assert took < 2.5, f"a scrape took {took:.1f}s: each collector waited out the timeout"
    assert value(registry, "dead_letters") is None and value(registry, "beat_lock_held") is None


def test_queue_depth_is_read_at_scrape_and_a_broker_error_is_a_sample(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert value(registry, "queue_depth", queue="a") == 3
    assert value(registry, "exporter_broker_up") == 1

    def down(app: object) -> dict[str, int]:
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(metrics, "queue_depths", down)
    assert value(registry, "queue_depth", queue="a") is None
    assert value(registry, "exporter_broker_up") == 0


def test_dead_letters_and_the_beat_lock_are_read_at_scrape(registry: CollectorRegistry) -> None:
    before = deadletters.count()
    process_order.apply(args=({"order_id": "o-dead"},))  # invalid payload: fails for good, one more dead letter
    assert value(registry, "dead_letters") == before + 1
    lock = redis.Redis.from_url(settings.redbeat_redis_url)
    lock.delete(settings.redbeat_lock_key)  # no beat: the alert's condition, and no age to report
    assert value(registry, "beat_lock_held") == 0
    assert value(registry, "beat_lock_age_seconds") is None
    # What a beat renewing the lock leaves: the key with the lock timeout, here renewed 3 s ago.
    lock.set(settings.redbeat_lock_key, "token", px=int((settings.redbeat_lock_timeout - 3) * 1000))
    try:
        assert value(registry, "beat_lock_held") == 1
        assert 2.5 <= (value(registry, "beat_lock_age_seconds") or 0) <= 4
    finally:
        lock.delete(settings.redbeat_lock_key)


def test_metric_names_follow_prometheus_conventions(registry: CollectorRegistry) -> None:
    fetch_price.apply(args=("EURUSD",))
    names = {sample.name for family in registry.collect() for sample in family.samples}
    assert all(name.startswith(f"{P}_") for name in names), names
    assert f"{P}_task_runtime_seconds_bucket" in names and f"{P}_task_succeeded_total" in names


# --- live: bin/metrics against the test broker and the session's workers ---------------------------------------


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


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
        wait_for(lambda: sample(port, "exporter_redis_up") == 1, what="exporter serving")
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


@pytest.mark.integration
def test_bin_metrics_answers_a_scrape_in_time_when_redis_hangs() -> None:
    """Redis accepts connections and never answers: bin/metrics's short timeouts and single retry answer the scrape,
    with redis_up 0, within Prometheus's default scrape timeout (10 s), so the alert on it can fire."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
        port = free_port()
        env = {**os.environ, "REDIS_URL": url, "CELERY_REDBEAT_REDIS_URL": url, "METRICS_PORT": str(port)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # bin/metrics runs `python`
        proc = subprocess.Popen([str(PROJECT / "bin" / "metrics")], env=env, cwd=PROJECT)
        try:
            wait_for(lambda: listening(port) or proc.poll() is not None, what="bin/metrics listening")
            started = time.monotonic()
            up = scrape(port).get((f"{P}_exporter_redis_up", ()))
            took = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nscrape with a hung Redis: {took:.1f}s, redis_up {up}")
    assert up == 0 and took < 10, f"the scrape took {took:.1f}s (redis_up {up})"
