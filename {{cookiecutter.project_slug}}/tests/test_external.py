"""The external-call example: which answers are retried, the circuit shared through Redis, its metrics.

A local HTTP server stands in for the API; the breaker's state is in the test Redis (conftest.py)."""

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pybreaker
import pytest
from prometheus_client import CollectorRegistry

from {{ cookiecutter.__package }} import metrics
from {{ cookiecutter.__package }}.celery_app import app
from {{ cookiecutter.__package }}.config.settings import settings
from {{ cookiecutter.__package }}.runtime import external
from {{ cookiecutter.__package }}.tasks import rates


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    """GET /<status>: answers with that status (Retry-After: 7 on 429/503), /200 with {"rate": "1.5"}."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status = int(self.path.strip("/").split("/")[0])
            body = json.dumps({"rate": "1.5"}).encode()
            self.send_response(status)
            if status in (429, 503):
                self.send_header("Retry-After", "7")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_only_what_can_succeed_later_is_unavailable(api: str) -> None:
    assert external.get_json(f"{api}/200") == {"rate": "1.5"}
    for status in (429, 503):
        with pytest.raises(external.Unavailable) as unavailable:
            external.get_json(f"{api}/{status}")
        assert unavailable.value.retry_after == 7
    with pytest.raises(httpx.HTTPStatusError):  # the caller's mistake: not retried, not counted by the breaker
        external.get_json(f"{api}/404")


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert external.retry_after_seconds("120") == 120
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 50 < (external.retry_after_seconds(later) or 0) <= 60
    assert external.retry_after_seconds("soon") is None
    assert external.backoff(0, retry_after=30) >= 30
    assert external.backoff(50) <= settings.max_countdown


def test_the_circuit_opens_for_every_process_sharing_redis() -> None:
    name = f"test-{uuid.uuid4().hex[:8]}"
    one = external.breaker(name)
    external.breaker.cache_clear()  # a second process: its own breaker object, the same Redis keys
    other = external.breaker(name)

    def failing() -> None:
        raise external.Unavailable("HTTP 503")

    def not_found() -> None:
        request = httpx.Request("GET", "http://api.invalid/rates/x")
        raise httpx.HTTPStatusError("404", request=request, response=httpx.Response(404, request=request))

    with pytest.raises(httpx.HTTPStatusError):  # the caller's mistake: passes through, does not count
        one.call(not_found)
    for _ in range(settings.breaker_fail_max):
        with pytest.raises(external.Unavailable):
            one.call(failing)
    assert other.current_state == pybreaker.STATE_OPEN
    with pytest.raises(pybreaker.CircuitBreakerError):
        other.call(lambda: "never called")
    assert 0 < external.seconds_until_trial(other) <= settings.breaker_reset_timeout

    registry = metrics.register(app, CollectorRegistry())
    state = registry.get_sample_value(f"{metrics.PREFIX}_circuit_state", {"circuit": name, "state": "open"})
    opened = registry.get_sample_value(
        f"{metrics.PREFIX}_circuit_transitions_total", {"circuit": name, "transition": "closed->open"}
    )
    # Each process that sees the change counts it (here: both breaker objects), so at least once.
    assert state == 1 and opened is not None and opened >= 1


def test_an_unset_api_url_fails_at_once_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "rates_api_url", None)
    with pytest.raises(rates.RatesApiNotConfigured, match="CELERY_RATES_API_URL"):
        rates.fetch_rate.run("EURUSD")


def test_refused_calls_come_back_spread_out_and_within_the_countdown_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    circuit = external.breaker(f"test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setattr(external, "seconds_until_trial", lambda cb: 10.0)
    delays = {external.after_trial(circuit) for _ in range(200)}
    # Spread over the next reset window: the waiting tasks do not all send their trial in the same second.
    assert min(delays) >= 11.0 and max(delays) <= 10.0 + settings.breaker_reset_timeout
    assert max(delays) - min(delays) > settings.breaker_reset_timeout / 2, sorted(delays)[:5]
    # Never past CELERY_MAX_COUNTDOWN: a longer countdown would be refused at retry (tasks/base.py).
    monkeypatch.setattr(settings, "max_countdown", 12)
    assert max(external.after_trial(circuit) for _ in range(50)) <= 12
