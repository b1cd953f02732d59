"""Idempotency keys in Redis, so a task that is delivered twice (acks_late redelivery, a retry, a replay) acts once.

The key goes through two states: "running" with a short expiry while the side effect happens, then "done" with a long
expiry. A redelivery that finds "done" skips; one that finds "running" retries later (the first delivery may still be
working, or died and its claim expires after `lock_ttl`). Plain SET NX with no "running" state would lose the effect
when a worker dies between claiming the key and finishing the work.
"""

from enum import Enum

from .redis_store import client, key
from .settings import settings


class Claim(Enum):
    CLAIMED = "claimed"  # this delivery does the work
    DONE = "done"  # an earlier delivery finished it: skip
    BUSY = "busy"  # another delivery holds the claim right now: retry later


def claim(name: str, lock_ttl: int) -> Claim:
    redis_key = key("idempotency", name)
    if client().set(redis_key, "running", nx=True, ex=lock_ttl):
        return Claim.CLAIMED
    return Claim.DONE if client().get(redis_key) == "done" else Claim.BUSY


def mark_done(name: str) -> None:
    client().set(key("idempotency", name), "done", ex=settings.idempotency_ttl)


def release(name: str) -> None:
    """Give the claim back after a failure, so the retry can claim it at once."""
    client().delete(key("idempotency", name))
