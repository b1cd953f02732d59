"""Idempotency keys in Redis, so a task that is delivered twice (acks_late redelivery, a retry, a replay) acts once.

The key goes through two states: "running:<token>" with a short expiry while the side effect happens, then "done"
with a long expiry. A redelivery that finds "done" skips; one that finds "running:..." retries later (the first
delivery may still be working, or died and its claim expires after the lock TTL). Plain SET NX with no "running"
state would lose the effect when a worker dies between claiming the key and finishing the work.

Each claim carries a token of its own delivery. Giving a claim back deletes the key only if it still holds that
token (compare-and-delete, one Lua script, atomic in Redis): a delivery whose claim expired while it ran must not
delete the claim another delivery took since, nor the "done" that delivery wrote, or a third delivery acts again.

`run_once(task, name, effect)` is the pattern for a task: claim, act, mark done; skip when done; retry when busy.
`effect` must end at its side effect (return as soon as the email is sent): whatever runs after it inside `effect`
and fails makes the claim be given back, and the retry acts again.

What a claim cannot cover:
- A Redis failover can lose a claim or a "done" written just before it: replication to the replica is asynchronous,
  so the promoted replica may not have it, and the next delivery acts again. Keep the side effect idempotent at its
  receiver too (an idempotency key in the API call) where a duplicate matters.
- The claim's expiry is the hard time limit plus a margin: it assumes the limit is enforced, which the prefork pool
  does and `WORKER_POOL=solo|threads` do not (no process to kill), so a run there can outlive its claim and a
  redelivery can act at the same time.
- The scripts below need Lua: a Redis ACL user needs `+@scripting`.
"""

import logging
import time
import uuid
from collections.abc import Callable
from enum import Enum
from typing import Any

import redis
from celery import Task

from ..config.settings import settings
from .redis_store import client, key

logger = logging.getLogger(__name__)

# The claim outlives the task's hard time limit by this much, so it cannot expire while the delivery still runs
# (the limit counts from the start of the run; the claim is taken a moment later).
LOCK_MARGIN = 30

# KEYS[1]: the idempotency key; ARGV[1]: "running:<token>". Deletes the key only while it holds this claim.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1]: the idempotency key; ARGV[1]: "running:<token>"; ARGV[2]: TTL of "done". The effect happened, so "done" is
# written either way; returns 1 if this delivery still held its claim, 0 if it had expired (another delivery may
# have acted too: the caller logs it, and the lock TTL was too short for this task).
_MARK_DONE = """
local held = redis.call('GET', KEYS[1]) == ARGV[1]
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
if held then return 1 end
return 0
"""


class Claim(Enum):
    CLAIMED = "claimed"  # this delivery does the work
    DONE = "done"  # an earlier delivery finished it: skip
    BUSY = "busy"  # another delivery holds the claim right now: retry later


def new_token() -> str:
    return uuid.uuid4().hex


def claim(name: str, token: str, lock_ttl: int) -> Claim:
    redis_key = key("idempotency", name)
    if client().set(redis_key, f"running:{token}", nx=True, ex=lock_ttl):
        return Claim.CLAIMED
    return Claim.DONE if client().get(redis_key) == "done" else Claim.BUSY


def mark_done(name: str, token: str, give_up_after: float = 0) -> bool:
    """Record the effect as done; False if this delivery's claim had expired before it finished.

    The effect already happened: if Redis does not answer (a blip, a failover), keep trying with a growing pause for
    up to `give_up_after` seconds (the claim's TTL: past it the claim is gone anyway), or a redelivery would find the
    claim expired and act again. Still failing: logged CRITICAL (a duplicate may follow) and raised."""
    script = client().register_script(_MARK_DONE)
    deadline = time.monotonic() + give_up_after
    pause = 0.1
    while True:
        try:
            return bool(script(keys=[key("idempotency", name)], args=[f"running:{token}", settings.idempotency_ttl]))
        except redis.RedisError as exc:
            if time.monotonic() + pause > deadline:
                logger.critical("%s: effect done but not recorded (%s); a redelivery may act again", name, exc)
                raise
            logger.warning("%s: could not record the effect as done (%s); retrying in %.1fs", name, exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def release(name: str, token: str) -> bool:
    """Give the claim back after a failure, so the retry can claim it at once; only if it is still this claim."""
    script = client().register_script(_RELEASE)
    return bool(script(keys=[key("idempotency", name)], args=[f"running:{token}"]))


def lock_ttl(task: Task[Any, Any]) -> int:
    """The claim's expiry, from the hard time limit this very run has: a per-call `time_limit=`, else the task's
    own `time_limit`, else the project's. A claim that expired mid-run would let a second delivery act too."""
    hard_limit = (task.request.timelimit or (None, None))[0] or task.time_limit or task.app.conf.task_time_limit
    if not hard_limit:
        raise ValueError(f"{task.name} has no hard time limit: idempotent tasks need one to size their claim")
    return int(hard_limit) + LOCK_MARGIN


def run_once(task: Task[Any, Any], name: str, effect: Callable[[], Any]) -> bool:
    """Run `effect` unless an earlier delivery did; True if this delivery ran it. Call from a bound task."""
    ttl = lock_ttl(task)
    token = new_token()
    state = claim(name, token, ttl)
    if state is Claim.DONE:
        return False
    if state is Claim.BUSY:
        # Another delivery is working on it, or died holding the claim: look again once a quarter of the TTL passed
        # (within CELERY_MAX_COUNTDOWN, which refuses longer countdowns).
        raise task.retry(countdown=max(1, min(ttl // 4, settings.max_countdown)))
    try:
        effect()
    except BaseException:
        release(name, token)
        raise
    if not mark_done(name, token, give_up_after=ttl):
        logger.warning("%s: claim expired before the effect finished; raise the task's time limit", name)
    return True
