"""Purging a queue: the one broker write among the ops commands, kept apart from reading (runtime/broker_stats.py)."""

from celery import Celery

from ..runtime.broker_stats import connect, not_found


def purge_queue(app: Celery, name: str) -> int:
    """Delete the ready messages of one queue; returns how many. Unacknowledged (reserved) messages stay."""
    with connect(app) as connection, connection.channel() as channel:
        try:
            return channel.queue_purge(name) or 0
        except connection.channel_errors as exc:
            if not not_found(exc):
                raise
            return 0  # never declared on the broker: nothing to remove
