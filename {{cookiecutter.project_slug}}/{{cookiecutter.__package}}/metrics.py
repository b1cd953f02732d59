"""Prometheus exporter: task outcomes and runtimes from the workers' counters in Redis, queue depths from the broker.

    bin/metrics    # GET http://$METRICS_ADDRESS:$METRICS_PORT/metrics (default 127.0.0.1:9808)

Everything is read when Prometheus scrapes, nothing is kept here: the task counters are the cluster-wide hash every
worker's pool processes add to after each task (runtime/counters.py), the depths come from the broker. So one exporter
per cluster is enough, a second one serves the same numbers, and a restart loses nothing. Workers send no task events
for it (they cost throughput: celeryconfig.py); Flower turns them on for itself while it runs.

Metrics (the prefix is the package name):
  <prefix>_task_runtime_seconds{task,queue}      histogram of successful runs
  <prefix>_task_succeeded_total{task,queue}      and _task_failed_total (final failures), _task_retried_total
  <prefix>_queue_depth{queue}                    messages ready in each declared queue
  <prefix>_exporter_broker_up                    1 if the broker answered this scrape's depth read, else 0
  <prefix>_exporter_redis_up                     1 if Redis answered this scrape's counter read, else 0
  <prefix>_circuit_state{circuit,state}          1 for the state each circuit breaker is in (runtime/external.py)
  <prefix>_circuit_transitions_total{circuit,transition}  state changes seen by the workers, e.g. closed->open
  <prefix>_dead_letters                          tasks that failed for good, kept for replay (runtime/deadletters.py)
  <prefix>_beat_lock_held                        1 while a beat holds RedBeat's lock, 0 when nobody does
  <prefix>_beat_lock_age_seconds                 time since the holder last renewed the lock (each beat tick does)

The queue label is the queue each run's message came from. Counters grow from the first task the workers ran against
this Redis; query them with rate()/increase(), which handle a reset. The alert rules and the Grafana dashboard built on
these metrics are in deploy/monitoring/.
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any, ClassVar

import redis
from celery import Celery
from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from .celery_app import app as celery_app
from .config.settings import settings
from .runtime import counters as task_counters
from .runtime import deadletters, external, logs, redis_store
from .runtime.broker_stats import queue_depths

PREFIX = __package__  # the package name: metric names stay unique when several projects share a Prometheus
logger = logging.getLogger(f"{PREFIX}.metrics")  # not __name__, which is "__main__" under `python -m`
# A hung Redis (connections accepted, never answered) costs each read its whole socket timeout, and one scrape makes
# several reads: together they would outlast Prometheus's scrape timeout, and the *_up gauges that say Redis is away
# would never be stored. After one read of a Redis fails, the other collectors skip that Redis for this long (the rest
# of the scrape); bin/metrics also gives the exporter shorter socket timeouts than the workers.
SKIP_AFTER_FAILURE = 5.0
_failed_at: dict[str, float] = {}


def _skipping(url: str) -> bool:
    return time.monotonic() - _failed_at.get(url, float("-inf")) < SKIP_AFTER_FAILURE


def _failed(url: str) -> None:
    _failed_at[url] = time.monotonic()


class QueueDepthCollector(Collector):
    """Reads queue depths from the broker when Prometheus scrapes, so the value is never stale."""

    def __init__(self, app: Celery[Any], prefix: str = PREFIX) -> None:
        self.app = app
        self.prefix = prefix

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        ready = "Messages ready in the queue (not yet delivered to a worker)"
        depth = GaugeMetricFamily(f"{self.prefix}_queue_depth", ready, labels=["queue"])
        up = GaugeMetricFamily(f"{self.prefix}_exporter_broker_up", "1 if the broker answered the queue depth read")
        return depth, up

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registration asks for the names; without this the registry would call collect() and reach the broker.
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, up = self._families()
        try:
            depths = queue_depths(self.app)
        except Exception as exc:  # any transport error: the scrape must still answer, with broker_up 0
            logger.warning("queue depth read failed: %s: %s", type(exc).__name__, exc)
            up.add_metric([], 0)
        else:
            for queue, count in depths.items():
                depth.add_metric([queue], count)
            up.add_metric([], 1)
        yield depth
        yield up


class TaskCountersCollector(Collector):
    """Reads the task counters from Redis when Prometheus scrapes."""

    COUNTERS: ClassVar[dict[str, str]] = {
        "succeeded": "Task runs that succeeded",
        "failed": "Task runs that failed for good",
        "retried": "Task runs that asked for a retry",
    }

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix

    def _families(self) -> tuple[dict[str, CounterMetricFamily], HistogramMetricFamily, GaugeMetricFamily]:
        labels = ["task", "queue"]
        counters = {
            kind: CounterMetricFamily(f"{self.prefix}_task_{kind}", text, labels=labels)
            for kind, text in self.COUNTERS.items()
        }
        runtime = HistogramMetricFamily(
            f"{self.prefix}_task_runtime_seconds", "Runtime of successful runs", labels=labels
        )
        up = GaugeMetricFamily(f"{self.prefix}_exporter_redis_up", "1 if Redis answered the task counter read")
        return counters, runtime, up

    def describe(self) -> Iterator[Metric]:
        counters, runtime, up = self._families()  # names only: registration must not reach Redis
        yield from (*counters.values(), runtime, up)

    def collect(self) -> Iterator[Metric]:
        families, runtime, up = self._families()
        try:
            if _skipping(settings.redis_url):
                raise ConnectionError("a read of this Redis failed moments ago")
            counters = task_counters.read()
        except Exception as exc:  # the scrape must still answer, with redis_up 0
            _failed(settings.redis_url)
            logger.warning("task counter read failed: %s: %s", type(exc).__name__, exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        runs: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        outcomes: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for (kind, task, queue), count in sorted(counters.items()):
            if kind in self.COUNTERS:
                outcomes[(task, queue)][kind] = count
            else:  # runtime_sum, le=<bucket>
                runs[(task, queue)][kind] = count
        # Every task and queue seen gets all three counters, 0 for an outcome it never had: PromQL's `+` and `/`
        # between them (the alert rules' run rate and failure ratio) drop a pair that lacks one of the series.
        for labels, counts in outcomes.items():
            for kind in self.COUNTERS:
                families[kind].add_metric(list(labels), counts.get(kind, 0.0))
        for labels, parts in runs.items():
            # Prometheus buckets are cumulative: each counts the runs at or under its bound.
            total, buckets = 0.0, []
            for bound in [*map(str, task_counters.BUCKETS), "+Inf"]:
                total += parts.get(f"le={bound}", 0.0)
                buckets.append((bound, total))
            runtime.add_metric(list(labels), buckets, parts.get("runtime_sum", 0.0))
        yield from (*families.values(), runtime, up)


class CircuitCollector(Collector):
    """Reads every circuit breaker's shared state from Redis when Prometheus scrapes (the workers keep it there)."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix

    def _families(self) -> tuple[GaugeMetricFamily, CounterMetricFamily]:
        state = GaugeMetricFamily(
            f"{self.prefix}_circuit_state", "1 for the state the circuit is in", labels=["circuit", "state"]
        )
        transitions = CounterMetricFamily(
            f"{self.prefix}_circuit_transitions",
            "Circuit state changes seen by workers",
            labels=["circuit", "transition"],
        )
        return state, transitions

    def describe(self) -> Iterator[Metric]:
        yield from self._families()  # names only: registration must not reach Redis

    def collect(self) -> Iterator[Metric]:
        state, transitions = self._families()
        try:
            if _skipping(settings.redis_url):
                raise ConnectionError("a read of this Redis failed moments ago")
            for name, (current, changes) in sorted(external.circuits().items()):
                for one in external.STATES:
                    state.add_metric([name, one], 1 if one == current else 0)
                for change, count in sorted(changes.items()):
                    transitions.add_metric([name, change], count)
        except Exception as exc:  # the scrape must still answer; exporter_redis_up reports Redis itself
            _failed(settings.redis_url)
            logger.warning("circuit state read failed: %s: %s", type(exc).__name__, exc)
        yield state
        yield transitions


class DeadLetterCollector(Collector):
    """Counts the dead letters in Redis when Prometheus scrapes: a growing count is tasks failing for good."""

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{self.prefix}_dead_letters", "Tasks that failed for good, kept for replay")

    def describe(self) -> Iterator[Metric]:
        yield self._family()  # names only: registration must not reach Redis

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            if _skipping(settings.redis_url):
                raise ConnectionError("a read of this Redis failed moments ago")
            family.add_metric([], deadletters.count())
        except Exception as exc:  # no sample rather than a wrong 0; exporter_redis_up reports Redis itself
            _failed(settings.redis_url)
            logger.warning("dead letter count failed: %s: %s", type(exc).__name__, exc)
        yield family


class BeatLockCollector(Collector):
    """Reads RedBeat's lock when Prometheus scrapes: who sends the schedule is visible only there.

    The active beat renews the lock every tick (at most beat_max_loop_interval apart) to redbeat_lock_timeout; a beat
    that died or froze stops renewing and the key expires. So held 0 means no beat is sending scheduled tasks, and the
    age grows past the loop interval while the holder is stuck. A second beat waiting for the lock is not visible here.
    """

    def __init__(self, prefix: str = PREFIX) -> None:
        self.prefix = prefix
        self._client: redis.Redis | None = None

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        held = GaugeMetricFamily(f"{self.prefix}_beat_lock_held", "1 while a beat holds the RedBeat lock")
        age = GaugeMetricFamily(
            f"{self.prefix}_beat_lock_age_seconds", "Seconds since the beat holding the lock last renewed it"
        )
        return held, age

    def describe(self) -> Iterator[Metric]:
        yield from self._families()  # names only: registration must not reach Redis

    def redis(self) -> redis.Redis:
        if self._client is None:  # the beat schedule may live in another Redis than REDIS_URL
            tls = settings.redis_ssl(settings.redbeat_redis_url) or {}
            self._client = redis.Redis.from_url(
                settings.redbeat_redis_url,
                socket_connect_timeout=settings.redis_socket_connect_timeout,
                socket_timeout=settings.redis_socket_timeout,
                retry=redis_store.retry(),
                **tls,
            )
        return self._client

    def collect(self) -> Iterator[Metric]:
        held, age = self._families()
        try:
            if _skipping(settings.redbeat_redis_url):
                raise ConnectionError("a read of this Redis failed moments ago")
            ttl_ms = self.redis().pttl(settings.redbeat_lock_key)  # -2: no such key
        except Exception as exc:  # no sample rather than a wrong 0; exporter_redis_up reports Redis itself
            _failed(settings.redbeat_redis_url)
            logger.warning("beat lock read failed: %s: %s", type(exc).__name__, exc)
        else:
            # -2: no lock; -1: a key without expiry, which no beat would renew or ever get: not held either.
            held.add_metric([], 1 if ttl_ms >= 0 else 0)
            if ttl_ms >= 0:
                age.add_metric([], max(0.0, settings.redbeat_lock_timeout - ttl_ms / 1000))
        yield held
        yield age


def register(app: Celery[Any], registry: CollectorRegistry = REGISTRY, prefix: str = PREFIX) -> CollectorRegistry:
    """The exporter's collectors, on `registry`."""
    registry.register(QueueDepthCollector(app, prefix))
    registry.register(TaskCountersCollector(prefix))
    registry.register(CircuitCollector(prefix))
    registry.register(DeadLetterCollector(prefix))
    registry.register(BeatLockCollector(prefix))
    return registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PREFIX}.metrics", description="Prometheus exporter")
    # argparse converts string defaults with `type`, so a bad METRICS_PORT is reported like a bad --port.
    parser.add_argument("--port", type=int, default=os.environ.get("METRICS_PORT", "9808"))
    parser.add_argument("--address", default=os.environ.get("METRICS_ADDRESS", "127.0.0.1"))
    args = parser.parse_args(argv)
    logs.configure(settings.log_format)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus-client; no `_created` series next to every counter: Prometheus does not need them
    register(celery_app)
    try:
        server, _ = start_http_server(args.port, args.address)
    except OSError as exc:
        print(f"error: cannot listen on {args.address}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logger.info("serving metrics on http://%s:%d/metrics", args.address, args.port)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
