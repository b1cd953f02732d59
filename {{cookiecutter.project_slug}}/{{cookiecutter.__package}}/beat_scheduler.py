"""RedBeat's scheduler, riding out a short Redis outage instead of exiting (bin/beat, celeryconfig.beat_scheduler).

RedBeat ends beat at the first Redis error of a tick (the lock renewal is its first Redis call); supervisor or
Kubernetes then restart it, after a back-off. Here a tick that cannot reach Redis is skipped and tried again a second
later, so a Redis restart of a few seconds costs only the ticks that fell inside it.

Exactly-once is kept by the lock: every tick still starts by renewing it, and nothing is sent in a tick whose renewal
failed. If the outage outlasted the lock (or Redis came back without its data), the renewal finds the lock gone and
raises LockError as before: beat exits, and a restart competes for the lock again, so two beats never both send.
"""

import logging
from typing import Any

from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

# Seconds between attempts while Redis is unreachable: short, so the first tick after a restart is not late.
RETRY_SECONDS = 1.0


class Scheduler(RedBeatScheduler):
    _redis_down = False  # set while ticks fail on Redis, to log the outage once, and its end

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            interval = super().tick(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not self._redis_down:
                logger.warning("beat: Redis unreachable, skipping ticks until it answers: %s", exc)
            self._redis_down = True
            return min(RETRY_SECONDS, self.max_interval)
        if self._redis_down:
            logger.warning("beat: Redis answers again; lock renewed, ticking")
            self._redis_down = False
        return interval

    def close(self) -> None:
        # Releasing the lock needs Redis; at shutdown during an outage the lock simply expires after its timeout.
        try:
            super().close()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning("beat: could not release the lock (Redis unreachable; it expires by itself): %s", exc)
