"""Errors and traces are off unless configured: without SENTRY_DSN and OTEL_EXPORTER_OTLP_ENDPOINT nothing is set up,
so nothing is sent (runtime/errors.py, runtime/tracing.py; the template's boot tier checks what is sent when on)."""

import pytest
import sentry_sdk

from {{ cookiecutter.__package }}.config.settings import settings
from {{ cookiecutter.__package }}.runtime import errors, tracing


def test_no_dsn_no_sentry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "sentry_dsn", None)
    assert errors.init("worker") is False
    assert not sentry_sdk.is_initialized()
    errors.report_final_failure(RuntimeError("not sent anywhere"))  # a no-op, not an error


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_with_an_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], on: bool
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing.enabled() is on


def test_no_endpoint_no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.init("worker") is False
