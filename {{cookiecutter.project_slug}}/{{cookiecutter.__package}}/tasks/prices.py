"""Price fetching: the retry pattern for a flaky upstream, and Decimal for money."""

import hashlib
from decimal import Decimal

from ..celery_app import app


class PriceFeedUnavailable(Exception):
    """A transient upstream failure (timeout, 5xx): worth retrying."""


def quote(pair: str) -> Decimal:
    """Stand-in for the HTTP call to your price feed; deterministic so examples and tests are repeatable."""
    digest = int(hashlib.sha256(pair.encode()).hexdigest(), 16)
    return Decimal(100 + digest % 100) / Decimal(100)


@app.task(
    # Stores its result (results are opt-in, celeryconfig.py): callers wait for the rate with .get().
    ignore_result=False,
    # Retry only what can succeed later; a bug (TypeError) or bad input must fail at once and be dead-lettered.
    autoretry_for=(PriceFeedUnavailable, ConnectionError, TimeoutError),
    # Exponential backoff 1, 2, 4, 8 ... s, capped at 10 minutes (retry_backoff_max, GuardedTask's default: within
    # CELERY_MAX_COUNTDOWN); jitter spreads retries of many tasks apart.
    retry_backoff=True,
    retry_jitter=True,
    max_retries=5,
)
def fetch_price(pair: str) -> str:
    # A re-run is harmless: reading a quote changes nothing upstream, and the later result overwrites the earlier one.
    # Serialized as a string: JSON has no Decimal, and a float would round the price.
    return str(quote(pair))
