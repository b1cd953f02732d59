"""Boot tier for errors and traces: Sentry (runtime/errors.py) and OpenTelemetry (runtime/tracing.py) against local
servers that play the Sentry ingest endpoint and an OTLP/HTTP collector, with real gunicorn, worker and beat processes.

What an operator would see: one trace per web request that enqueues a chain, whose spans cover the request, each
publish and each task of the chain; one Sentry event per task that fails for good (not one per retry), tagged with
its task, queue and retry count; Sentry Crons check-ins when beat (RedBeat) sends a scheduled task; nothing sent with
SENTRY_DSN unset. Redis broker only: neither library depends on the broker. Run with -s for the span names.
"""

import gzip
import json
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from booted import BootedProject, Proc, running_project, running_web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from services import wait_until

pytestmark = pytest.mark.boot
TOKEN = secrets.token_urlsafe(24)
ORDERS = [
    {"order_id": f"o-trace-{i}", "amount": "10.00", "currency": "EUR", "email": "a@example.com"} for i in range(2)
]
# The chain behind workflows.settle (tasks/workflows.py): the rate, a chord of conversions, the summary, its receipt.
CHAIN = ("prices.fetch_price", "workflows.convert_order", "workflows.summarize", "notifications.send_receipt")
FAILING = "devtools.diagnostics.fail_after_retries"
POISON = (
    "devtools.diagnostics.lose_worker"  # kills its own pool process: dead-lettered after CELERY_TASK_MAX_WORKER_LOST
)
RETRIES = 2  # fail_after_retries' max_retries


@dataclass
class Recorder:
    """A local HTTP server that records what is POSTed to it; `decode` turns one request body into records."""

    decode: Any
    answer: bytes = b"{}"
    records: list[tuple[float, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                assert encoding in ("", "gzip"), f"unexpected Content-Encoding {encoding!r}"
                with recorder.lock:
                    recorder.records.extend((time.time(), item) for item in recorder.decode(self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", str(len(recorder.answer)))
                self.end_headers()
                self.wfile.write(recorder.answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def since(self, start: float) -> list[Any]:
        with self.lock:
            return [item for at, item in self.records if at >= start]


def envelope_items(path: str, body: bytes) -> list[dict[str, Any]]:
    """Sentry's envelope format: a header line, then per item a header line and a payload, either `length` bytes or
    up to the next newline. https://develop.sentry.dev/sdk/data-model/envelopes/"""
    assert path.startswith("/api/1/envelope/"), path
    items, position = [], body.index(b"\n") + 1
    while position < len(body):
        end = body.find(b"\n", position)
        header = json.loads(body[position : end if end >= 0 else len(body)])
        position = end + 1
        if "length" in header:
            payload, position = body[position : position + header["length"]], position + header["length"] + 1
        else:
            end = body.find(b"\n", position)
            end = end if end >= 0 else len(body)
            payload, position = body[position:end], end + 1
        items.append({"type": header["type"], "payload": json.loads(payload) if payload.strip() else None})
    return items


def otlp_spans(path: str, body: bytes) -> list[dict[str, str]]:
    """OTLP/HTTP with protobuf: one ExportTraceServiceRequest per POST to /v1/traces."""
    assert path == "/v1/traces", path
    spans = []
    for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
        attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    {
                        "name": span.name,
                        "trace": span.trace_id.hex(),
                        "id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "service": attributes.get("service.name", ""),
                    }
                )
    return spans


def start_worker(project: BootedProject, name: str, env: dict[str, str] | None = None) -> Proc:
    """One bin/worker on every queue: the chain's steps are routed to all three."""
    queues = ",".join(project.queues)
    proc = project.start(
        f"worker-{name}", [str(project.path / "bin" / "worker")], {"WORKER_QUEUES": queues, **(env or {})}
    )
    proc.wait_for_log("ready.")
    return proc


@dataclass
class Stack:
    project: BootedProject
    sentry: Recorder
    collector: Recorder
    worker: Proc

    def fail_once(self, task: str = FAILING, key: str = "drill") -> str:
        """Send a task that fails on every attempt, and wait until it is a dead letter. Returns its id."""
        task_id = str(self.project.program("send_task_by_name", task, [key], None, self.project.queues[0]))
        wait_until(
            lambda: task_id in self.project.module("ops", "deadletters", "list").stdout,
            90,
            f"{task}[{task_id}] dead-lettered",
        )
        return task_id


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    sentry = Recorder(envelope_items)
    collector = Recorder(otlp_spans, ExportTraceServiceResponse().SerializeToString())
    name = f"Telemetry redis {os.environ.get('PYTEST_XDIST_WORKER', '')}".strip()
    with running_project(tmp_path_factory.mktemp("telemetry"), name, "redis", workers=False) as project:
        project.env.update(
            {
                "SENTRY_DSN": f"http://public@127.0.0.1:{sentry.port}/1",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
                # Batches every 0.2 s instead of 5 s: the test waits less.
                "OTEL_BSP_SCHEDULE_DELAY": "200",
                # Sentry Crons take whole minutes: the example refresh every 60 s is monitored.
                "CELERY_PRICE_REFRESH_SECONDS": "60",
            }
        )
        yield Stack(project, sentry, collector, start_worker(project, "telemetry"))
        sentry.server.shutdown()
        collector.server.shutdown()


def test_a_request_that_enqueues_a_chain_is_one_trace(stack: Stack) -> None:
    package = stack.project.package
    started = time.time()
    with running_web(stack.project, "web", TOKEN) as (_, port), httpx.Client(timeout=15) as http:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        accepted = http.post(
            f"http://127.0.0.1:{port}/tasks/workflows.settle",
            json={"batch_id": "trace-1", "orders": ORDERS},
            headers=headers,
        )
        assert accepted.status_code == 202, accepted.text

        def summary() -> dict | None:
            status = http.get(accepted.json()["status_url"], headers=headers).json()
            assert status["state"] != "FAILURE", status
            return status if status["state"] == "SUCCESS" else None

        result = wait_until(summary, 60, "the settlement chain finishing")["result"]
        assert result["accepted"] == len(ORDERS), result

    publishes = {f"apply_async/{package}.tasks.{task}" for task in CHAIN}
    runs = {f"run/{package}.tasks.{task}" for task in CHAIN}

    def spans() -> list[dict[str, str]] | None:
        received = stack.collector.since(started)
        return received if {"POST /tasks/{name}", *runs} <= {span["name"] for span in received} else None

    received = wait_until(
        spans, 30, lambda: f"the request's and {sorted(runs)} spans; got {stack.collector.since(started)}"
    )
    request = next(span for span in received if span["name"] == "POST /tasks/{name}")
    traces = {span["trace"] for span in received if span["name"] in publishes | runs}
    in_trace = [span for span in received if span["trace"] == request["trace"]]
    print(f"one trace, {len(in_trace)} spans:")
    for (service, name), count in sorted(Counter((span["service"], span["name"]) for span in in_trace).items()):
        print(f"  {service}: {name}" + (f" (x{count})" if count > 1 else ""))
    # Every publish and every run belongs to the request's trace: a context lost at any hop starts a trace of its own.
    assert traces == {request["trace"]}, (
        f"the chain's spans are in {len(traces)} trace(s) apart from the request's: the context was lost on the way"
    )
    assert request["parent"] == "", "the request's span should be the trace's root"
    assert publishes | runs <= {span["name"] for span in in_trace}, "a publish or a run is missing from the trace"
    slug = stack.project.path.name
    assert {span["service"] for span in in_trace} == {f"{slug}-web", f"{slug}-worker"}


def test_a_task_failing_after_retries_is_one_sentry_event_with_its_tags(stack: Stack) -> None:
    started = time.time()
    task_id = stack.fail_once()
    time.sleep(3)  # an event per retry, or a second one for the same failure, would have arrived by now
    events = [item["payload"] for item in stack.sentry.since(started) if item["type"] == "event"]
    print(f"{len(events)} event(s) for {FAILING}[{task_id}] tried {RETRIES + 1} times")
    assert len(events) == 1, [e.get("exception", {}).get("values", [{}])[-1].get("value") for e in events]
    event = events[0]
    tags = {key: str(value) for key, value in event["tags"].items()}
    assert tags["celery_task_name"] == FAILING, tags
    assert tags["celery_queue"] == stack.project.queues[0], tags
    assert tags["celery_retries"] == str(RETRIES), tags
    assert tags["celery_task_id"] == task_id and tags["process"] == "worker", tags
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "DrillFailure" and f"attempt {RETRIES + 1}" in exception["value"], exception
    # The payload stays out of the event (it may hold personal data).
    assert event["extra"]["celery-job"]["args"] == "[Filtered]", event["extra"]


def test_a_poison_message_is_one_sentry_event(stack: Stack) -> None:
    """WorkerLost is raised before the task's code runs (tasks/base.py), where the SDK's Celery integration does not
    look: DeadLetterTask.on_failure reports it."""
    started = time.time()
    task_id = stack.fail_once(POISON, "poison-telemetry")
    time.sleep(3)
    events = [item["payload"] for item in stack.sentry.since(started) if item["type"] == "event"]
    print(f"{len(events)} event(s) for the poison message {POISON}[{task_id}]")
    assert len(events) == 1, [e.get("exception", {}).get("values", [{}])[-1].get("value") for e in events]
    assert events[0]["exception"]["values"][-1]["type"] == "WorkerLost", events[0]["exception"]
    assert events[0]["tags"]["celery_task_name"] == POISON and events[0]["tags"]["celery_task_id"] == task_id


def test_a_refused_message_is_one_event_without_its_arguments(stack: Stack) -> None:
    """Celery's consumer logs a refused message with its body (the arguments); runtime/signals.py logs the refusal
    without them. Only the second may reach Sentry."""
    started = time.time()
    email = "jane.doe@example.com"
    task_id = str(stack.project.program("send_task_by_name", "no.such.task", [email], None, stack.project.queues[0]))
    wait_until(lambda: [i for i in stack.sentry.since(started) if i["type"] == "event"], 30, "an event for the refusal")
    time.sleep(3)  # the consumer's own ERROR line, if it were sent, would have arrived by now
    events = [item["payload"] for item in stack.sentry.since(started) if item["type"] == "event"]
    print(f"{len(events)} event(s) for a refused message: {[e.get('logentry', {}).get('message') for e in events]}")
    assert len(events) == 1 and task_id in json.dumps(events[0]), events
    assert email not in json.dumps(stack.sentry.since(started)), "the refused message's arguments reached Sentry"


def test_beat_sends_sentry_crons_check_ins(stack: Stack) -> None:
    # Due 2 s after beat starts, not a whole interval (60 s, the shortest Sentry Crons takes) later.
    stack.project.program("beat_due_soon", "refresh-eurusd", 58)
    started = time.time()
    beat = stack.project.start("beat", [str(stack.project.path / "bin" / "beat")])
    try:

        def check_ins() -> dict[str, dict] | None:
            found = {
                item["payload"]["status"]: item["payload"]
                for item in stack.sentry.since(started)
                if item["type"] == "check_in" and item["payload"]["monitor_slug"] == "refresh-eurusd"
            }
            return found if {"in_progress", "ok"} <= found.keys() else None

        found = wait_until(check_ins, 30, lambda: f"check-ins in_progress and ok; got {stack.sentry.since(started)}")
    finally:
        beat.stop()
    print(f"check-ins for refresh-eurusd: {sorted(found)}, schedule {found['in_progress'].get('monitor_config')}")
    # Beat opened the check-in when it sent the task, the worker closed the same one when the task succeeded.
    assert found["in_progress"]["check_in_id"] == found["ok"]["check_in_id"]
    assert found["in_progress"]["monitor_config"]["schedule"] == {"type": "interval", "value": 1, "unit": "minute"}


def test_unset_dsn_sends_nothing(stack: Stack) -> None:
    assert stack.worker.stop() == 0
    stack.worker = start_worker(stack.project, "no-sentry", {"SENTRY_DSN": ""})
    started = time.time()
    stack.fail_once()
    time.sleep(3)
    assert stack.sentry.since(started) == [], "SENTRY_DSN is unset, yet something reached the Sentry endpoint"
