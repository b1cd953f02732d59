"""Purging a queue: the one broker write among the ops commands, kept apart from reading (runtime/broker_stats.py)."""

from typing import Any

from celery import Celery

from ..runtime.broker_stats import connect, not_found


def purge_queue(app: Celery[Any], name: str) -> int:
    """Delete the ready messages of one queue; returns how many. Unacknowledged (reserved) messages stay."""
    with connect(app) as connection, connection.channel() as channel:
        try:
            # The stubs type channel() as the abstract StdChannel, without the AMQP methods every transport has.
            return int(channel.queue_purge(name) or 0)  # type: ignore[attr-defined]
        except connection.channel_errors as exc:
            if not not_found(exc):
                raise
            return 0  # never declared on the broker: nothing to remove
