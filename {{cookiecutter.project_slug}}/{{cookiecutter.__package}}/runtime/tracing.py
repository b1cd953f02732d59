"""Tracing with OpenTelemetry: off unless OTEL_EXPORTER_OTLP_ENDPOINT is set, then one trace per piece of work.

A trace follows a request{% if cookiecutter.use_web == "y" %} to the web app{% endif %} through the publish of its task and every task that follows
(chain steps, chord header and callback, links): each publish puts the trace context in the message headers, and
the worker running the task continues it. Spans go to an OTLP/HTTP endpoint (an OpenTelemetry Collector, or a backend
that takes OTLP: Jaeger, Tempo, Honeycomb...) in batches, from a background thread.

Configured by the standard OpenTelemetry variables, read by the SDK from the process environment (not from .env):
OTEL_EXPORTER_OTLP_ENDPOINT (e.g. http://otel-collector:4318; "/v1/traces" is added), OTEL_EXPORTER_OTLP_HEADERS,
OTEL_SERVICE_NAME (default: the project's slug and the process, "<slug>-worker"), OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG (default: every trace), OTEL_SDK_DISABLED=true turns it off again.
https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/

Set up after the fork, in each process that does the work: the batch processor's thread and the exporter's
connections do not survive a fork. A prefork worker sets up each pool process (worker_process_init), the threads
pool sets up its one process (worker_init); beat at beat_init{% if cookiecutter.use_web == "y" %}; the web app in its lifespan, which every gunicorn
worker runs after the fork (web.py; its routes are wrapped at import by instrument_web_app){% endif %}.
"""

import logging
import os
from typing import Any

from celery import signals
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
{%- if cookiecutter.use_web == "y" %}
from fastapi import FastAPI
{%- endif %}
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import CeleryInstrumentor
{%- if cookiecutter.use_web == "y" %}
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
{%- endif %}
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

logger = logging.getLogger(__name__)
# The default service name's first part; OTEL_SERVICE_NAME replaces the whole name.
SERVICE = "{{ cookiecutter.project_slug }}"
_provider: TracerProvider | None = None  # this process's, once set up


def enabled() -> bool:
    """The switch: an OTLP endpoint (for all signals or for traces), and the SDK not disabled."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return bool(endpoint) and os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


def init(process: str) -> bool:
    """Export this process's spans and trace Celery's publishes and task runs in it. Once per process; True if on."""
    global _provider
    if not enabled():
        return False
    if _provider is not None:
        return True
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, if set
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"{SERVICE}-{process}"}))
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    # Batches, sent from a thread: a task never waits for the collector, and spans are dropped (not queued without
    # bound) while it is away. The exporter reads the endpoint, headers and timeout from OTEL_EXPORTER_OTLP_*.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]  # its __init__ has no annotations
    _provider = provider
    logger.info("traces are exported over OTLP/HTTP as %s", resource.attributes.get(SERVICE_NAME))
    return True


def shutdown() -> None:
    """Send the spans still in the batch: a pool process replaced (max memory per child) would lose them."""
    if _provider is not None:
        _provider.shutdown()
{%- if cookiecutter.use_web == "y" %}


def instrument_web_app(app: FastAPI) -> None:
    """A server span per request. At import, before the app first runs: it wraps the app's middleware stack, which is
    built at the first call. The spans go to the provider init("web") sets up later, in each web worker."""
    if enabled():
        # Probes every few seconds would be most of the traces and tell nothing.
        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz")
{%- endif %}


@signals.worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    init("worker")


@signals.worker_init.connect
def _init_threads_worker(sender: Any = None, **_: Any) -> None:
    # The prefork pool's processes set up their own (above); the threads pool runs tasks in this process.
    if sender is not None and not issubclass(get_implementation(sender.pool_cls), PreforkPool):
        init("worker")


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _flush(**_: Any) -> None:
    shutdown()


@signals.beat_init.connect
def _init_beat(**_: Any) -> None:
    init("beat")
