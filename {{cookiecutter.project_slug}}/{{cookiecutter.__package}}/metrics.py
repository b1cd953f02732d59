"""Prometheus exporter: task outcomes and runtimes from Celery's event stream, queue depths from the broker.

    bin/metrics    # GET http://$METRICS_ADDRESS:$METRICS_PORT/metrics (default 127.0.0.1:9808)

Run ONE exporter per cluster, not one per worker. Workers publish their task events (worker_send_task_events in
celeryconfig.py) to one cluster-wide exchange, so a single consumer sees every task of every worker; an exporter next
to each worker would count every task once per exporter. Counting inside the workers instead would need
prometheus_client's multiprocess mode: tasks run in prefork children, each with its own counters, merged through
files on disk, and a per-worker endpoint to scrape.

Metrics (the prefix is the package name):
  <prefix>_task_runtime_seconds{task,queue}      histogram of successful runs (task-succeeded carries the runtime)
  <prefix>_task_succeeded_total{task,queue}      and _task_failed_total (final failures), _task_retried_total
  <prefix>_queue_depth{queue}                    messages ready in each declared queue, read at scrape time
  <prefix>_exporter_broker_up                    1 if the broker answered this scrape's depth read, else 0
  <prefix>_exporter_events_connected             1 while the event stream is consumed, 0 while reconnecting
  <prefix>_exporter_events_received_total        every event consumed (workers send a heartbeat event every 2 s)

Events carry no queue: the queue label is the one the project's router gives the task name (queues.py), so a task sent
with an explicit `queue=` is counted under its routed queue. Counters start at 0 with the exporter and miss what happens
while it is disconnected; query them with rate()/increase(), which handle restarts.
"""

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from celery import Celery
from celery.utils.functional import LRUCache
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import logs
from .broker_stats import queue_depths
from .celery_app import app as celery_app
from .settings import settings

PREFIX = __package__  # the package name: metric names stay unique when several projects share a Prometheus
logger = logging.getLogger(f"{PREFIX}.metrics")  # not __name__, which is "__main__" under `python -m`
# Seconds, up to the default hard time limit (300 s): the top buckets show tasks creeping towards it.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
# task-received carries the name, the later events only the id: remember names of tasks in flight, oldest dropped.
NAMES_KEPT = 10_000
UNKNOWN = "unknown"  # a task received before the exporter started: its outcome is counted, its name is not known
RECONNECT_MAX = 30.0  # seconds between reconnect attempts at most; the first retry comes after 1 s


class QueueDepthCollector(Collector):
    """Reads queue depths from the broker when Prometheus scrapes, so the value is never stale."""

    def __init__(self, app: Celery, prefix: str = PREFIX) -> None:
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


class Exporter:
    """Turns task events into counters and a runtime histogram; registers the queue depth collector."""

    def __init__(self, app: Celery, registry: CollectorRegistry = REGISTRY, prefix: str = PREFIX) -> None:
        self.app = app
        self.registry = registry
        labels = ("task", "queue")
        self.runtime = Histogram(
            f"{prefix}_task_runtime_seconds", "Runtime of successful runs", labels, buckets=BUCKETS, registry=registry
        )
        self.succeeded = Counter(f"{prefix}_task_succeeded", "Task runs that succeeded", labels, registry=registry)
        self.failed = Counter(f"{prefix}_task_failed", "Task runs that failed for good", labels, registry=registry)
        self.retried = Counter(f"{prefix}_task_retried", "Task runs that asked for a retry", labels, registry=registry)
        self.events = Counter(f"{prefix}_exporter_events_received", "Celery events consumed", registry=registry)
        self.connected = Gauge(
            f"{prefix}_exporter_events_connected", "1 while the event stream is consumed", registry=registry
        )
        registry.register(QueueDepthCollector(app, prefix))
        self._names = LRUCache(limit=NAMES_KEPT)
        self._queues: dict[str, str] = {}
        self._stopping = threading.Event()
        self._receiver: Any = None
        self._delay = 1.0

    def queue_of(self, task_name: str) -> str:
        if task_name not in self._queues:
            route = self.app.amqp.router.route({}, task_name) if task_name != UNKNOWN else None
            self._queues[task_name] = route["queue"].name if route else UNKNOWN
        return self._queues[task_name]

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.inc()
        kind, task_id = event.get("type", ""), event.get("uuid")
        if kind == "task-received":
            self._names[task_id] = event.get("name") or UNKNOWN
            return
        if kind not in ("task-succeeded", "task-failed", "task-retried"):
            return  # worker heartbeats, task-started, ...: counted above only
        # A retry comes back as a new task-received with the same id; a final outcome frees the slot.
        name = self._names.get(task_id, UNKNOWN) if kind == "task-retried" else self._names.pop(task_id, UNKNOWN)
        labels = (name, self.queue_of(name))
        if kind == "task-succeeded":
            self.succeeded.labels(*labels).inc()
            if event.get("runtime") is not None:
                self.runtime.labels(*labels).observe(float(event["runtime"]))
        elif kind == "task-failed":
            self.failed.labels(*labels).inc()
        else:
            self.retried.labels(*labels).inc()

    def consume_events(self) -> None:
        """The event thread: capture events until stopped, reconnecting with backoff whenever the broker goes away."""
        while not self._stopping.is_set():
            try:
                with self.app.connection_for_read() as connection:
                    self._receiver = self.app.events.Receiver(connection, handlers={"*": self.on_event})
                    # Set once the event queue is bound and consumed: from then on no event is missed.
                    self._receiver.on_consume_ready = self._ready(self._receiver.on_consume_ready)
                    self._receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception as exc:  # any transport error: an exporter that exits leaves gaps in every graph
                self.connected.set(0)
                logger.warning("event stream lost (%s: %s); retrying in %.0fs", type(exc).__name__, exc, self._delay)
                self._stopping.wait(self._delay)
                self._delay = min(self._delay * 2, RECONNECT_MAX)

    def _ready(self, on_consume_ready: Any) -> Any:
        def ready(*args: Any, **kwargs: Any) -> None:
            on_consume_ready(*args, **kwargs)
            self.connected.set(1)
            self._delay = 1.0
            logger.info("consuming task events")

        return ready

    def stop(self) -> None:
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.should_stop = True  # capture() checks it at least once a second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {PREFIX}.metrics", description="Prometheus exporter")
    # argparse converts string defaults with `type`, so a bad METRICS_PORT is reported like a bad --port.
    parser.add_argument("--port", type=int, default=os.environ.get("METRICS_PORT", "9808"))
    parser.add_argument("--address", default=os.environ.get("METRICS_ADDRESS", "127.0.0.1"))
    args = parser.parse_args(argv)
    logs.configure(settings.log_format)
    disable_created_metrics()  # no `_created` series next to every counter: Prometheus does not need them
    exporter = Exporter(celery_app)
    try:
        server, _ = start_http_server(args.port, args.address)
    except OSError as exc:
        print(f"error: cannot listen on {args.address}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    events = threading.Thread(target=exporter.consume_events, name="events", daemon=True)
    events.start()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logger.info("serving metrics on http://%s:%d/metrics", args.address, args.port)
    stop.wait()
    exporter.stop()
    server.shutdown()
    events.join(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
