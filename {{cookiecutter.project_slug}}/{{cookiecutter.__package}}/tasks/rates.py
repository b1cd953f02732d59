"""The example integration: a task calling an external HTTP API through a shared circuit breaker (runtime/external.py).

GET <CELERY_RATES_API_URL>/rates/<pair> answers {"rate": "1.0842"}. Replace the URL and the parsing with your API's;
keep the shape: timeouts from settings, retries only for what can succeed later, the breaker around the call.
In Kubernetes the workers need an egress rule to reach the API (deploy/k8s/base/networkpolicies.yaml).
"""

from typing import Any

import pybreaker
import redis
from celery import Task

from ..celery_app import app
from ..config.settings import settings
from ..runtime import external

BREAKER = "rates_api"


class RatesApiNotConfigured(RuntimeError):
    """CELERY_RATES_API_URL is unset: not retried, dead-lettered with this reason."""


class CircuitOpen(Exception):
    """The circuit was still open when the retry budget ran out: the dead letter's reason."""


@app.task(
    bind=True,
    # Callers wait for the rate with .get().
    ignore_result=False,
    # The budget counts every retry: failures, 429s and the waits while the circuit is open.
    max_retries=settings.rates_api_max_retries,
)
def fetch_rate(self: Task[Any, Any], pair: str) -> str:
    if not settings.rates_api_url:
        raise RatesApiNotConfigured("CELERY_RATES_API_URL is not set: set it to your rates API's base URL (.env)")
    url = f"{settings.rates_api_url.rstrip('/')}/rates/{pair}"
    try:
        circuit = external.breaker(BREAKER)
        # calling(), not call(): call() holds the breaker's lock for the whole request, one call at a time per process
        # (the threads pool would run them in turn).
        with circuit.calling():
            answer = external.get_json(url)
    except pybreaker.CircuitBreakerError as exc:
        # Not sent: the API is known to be down. Come back after the trial time, spread out (external.after_trial);
        # the worker is free for other tasks meanwhile.
        countdown = external.after_trial(circuit)
        raise self.retry(countdown=countdown, exc=CircuitOpen(f"circuit {BREAKER} open: {exc}")) from exc
    except external.Unavailable as exc:
        raise self.retry(countdown=external.backoff(self.request.retries, exc.retry_after), exc=exc) from exc
    except redis.RedisError as exc:  # the breaker's shared state is unreachable: retry, like a failed call
        raise self.retry(countdown=external.backoff(self.request.retries), exc=exc) from exc
    # A string: JSON has no Decimal, and a float would round the rate.
    return str(answer["rate"])
