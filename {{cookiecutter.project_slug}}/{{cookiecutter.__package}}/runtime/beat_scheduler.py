"""RedBeat's scheduler, riding out a short Redis outage instead of exiting (bin/beat, celeryconfig.beat_scheduler).

RedBeat ends beat at the first Redis error of a tick (the lock renewal is its first Redis call); supervisor or
Kubernetes then restart it, after a back-off. Here a tick that cannot reach Redis is skipped and tried again a second
later, so a Redis restart of a few seconds costs only the ticks that fell inside it.

Exactly-once is kept by the lock:
- every tick still starts by renewing it, and nothing is sent in a tick whose renewal failed;
- a tick stops sending at its first connection error (the rest wait for the next tick, which renews the lock first),
  and once it has run for half the lock timeout since the renewal, so a tick cannot outlast the lock it renewed;
- if the outage outlasted the lock (or Redis came back without its data), the renewal finds the lock gone and raises
  LockError as before: beat exits, and a restart competes for the lock again, so two beats never both send;
- an outage longer than the lock timeout (Redis gone, or refusing beat's password) ends beat too: the lock has
  expired by then anyway, and a restart is the visible signal.
A standby beat waits for the lock in RedBeat's beat_init handler; a Redis error there is swallowed by the signal
dispatch and left the standby without a lock object (AttributeError at its first tick). Here it keeps trying to
acquire the lock at each tick instead, and sends nothing until it holds it.
"""

import logging
import time
from typing import Any

from kombu.exceptions import OperationalError
from redbeat import RedBeatScheduler
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, get_redis
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# Seconds between attempts while Redis is unreachable: short, so the first tick after a restart is not late.
RETRY_SECONDS = 1.0
# Seconds between repeated ERROR lines while the outage lasts.
LOG_EVERY = 10.0
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)  # AuthenticationError is a ConnectionError too


class RedisOutageError(RuntimeError):
    """Redis stayed unreachable (or refused beat) for longer than the lock timeout: beat exits."""


def describe(exc: BaseException) -> str:
    """The outage's cause, in words that lead to the fix: a refused password is not an unreachable server."""
    if isinstance(exc, AuthenticationError) or "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
        return f"Redis refuses beat's credentials (check REDIS_URL / CELERY_REDBEAT_REDIS_URL): {exc}"
    return f"Redis unreachable: {exc}"


def connection_error(exc: BaseException | None) -> bool:
    """True when exc, or an exception it was raised from, is a Redis or broker connection error."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (*REDIS_DOWN, OperationalError, ConnectionError, TimeoutError)):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class Scheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat ships no type information: its class is Any
    _down_since: float | None = None  # monotonic time of the first failed lock call of the current outage
    _logged_at = 0.0
    _renewed_at = 0.0  # monotonic time of the last lock renewal (or acquisition)
    _abort_tick = False  # set by a send that hit a connection error: the rest of this tick is skipped

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock_key and self.lock is None and not self._acquire():
                interval = None  # a standby: another beat holds the lock
            else:
                self._abort_tick = False
                # RedBeat's tick renews the lock first, then sends; the time is taken before the renewal (safe side).
                self._renewed_at = time.monotonic()
                interval = super().tick(*args, **kwargs)
        except REDIS_DOWN as exc:
            return self._outage(exc)
        if self._down_since is not None:
            logger.warning("beat: Redis answers again after %.0fs", self._elapsed())
            self._down_since = None
        if interval is None:
            return float(self.max_interval)  # float(): RedBeat's attributes are untyped (Any)
        return RETRY_SECONDS if self._abort_tick else interval

    def _acquire(self) -> bool:
        """RedBeat's beat_init lock, taken without blocking (the tick loop retries); True once held."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        # As RedBeat does: its extend script sets the TTL to the timeout instead of adding to it.
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        acquired_at = time.monotonic()
        if not lock.acquire(blocking=False):
            return False
        logger.info("beat: Acquired lock")
        self.lock, self._renewed_at = lock, acquired_at
        return True

    def _elapsed(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def _outage(self, exc: BaseException) -> float:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since, self._logged_at = now, 0.0
        elapsed = now - self._down_since
        if elapsed > self.lock_timeout:
            logger.error(
                "beat: %s; for %.0fs, longer than the lock timeout (%ss): the lock has expired, exiting so a "
                "restart competes for it again",
                describe(exc),
                elapsed,
                self.lock_timeout,
            )
            raise RedisOutageError(f"{describe(exc)} for {elapsed:.0f}s (lock timeout {self.lock_timeout}s)") from exc
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            logger.error(
                "beat: %s; skipping ticks for %.0fs so far (beat exits after %ss, the lock timeout)",
                describe(exc),
                elapsed,
                self.lock_timeout,
            )
        return min(RETRY_SECONDS, float(self.max_interval))

    def maybe_due(self, entry: Any, **kwargs: Any) -> Any:
        # Skip (do not send) once this tick hit a connection error or has run for half the lock timeout: another beat
        # may hold the lock by the time a late send goes out. The skipped entries are still due at the next tick.
        late = bool(self.lock_key) and time.monotonic() - self._renewed_at > self.lock_timeout / 2
        if self._abort_tick or late:
            self._abort_tick = True
            return None
        return super().maybe_due(entry, **kwargs)

    def apply_async(self, entry: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().apply_async(entry, *args, **kwargs)
        except Exception as exc:
            # Celery wraps a failed publish in SchedulingError; the connection error is in its context.
            if connection_error(exc):
                self._abort_tick = True  # RedBeat logs it as a Message Error; the rest of the tick is skipped
            raise

    def close(self) -> None:
        # Releasing the lock needs Redis; at shutdown during an outage the lock simply expires after its timeout.
        try:
            super().close()
        except REDIS_DOWN as exc:
            logger.warning("beat: could not release the lock (it expires by itself): %s", describe(exc))
