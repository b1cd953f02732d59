"""Queue depths read from the broker: how many messages wait in each declared queue.

Shared by the metrics exporter (read at every scrape) and the ops command line (`ops queues`, `ops purge`). One passive
`queue_declare` per queue: it creates nothing, and both transports answer it cheaply (RabbitMQ from its queue table,
kombu's Redis transport with one LLEN per priority list).

The depth counts messages that are *ready*: not yet delivered to a worker. Messages a worker has prefetched or holds
for a countdown/ETA are unacknowledged (task_acks_late) and not counted; `ops reserved` and `ops scheduled` show them.
"""

from typing import Any

from celery import Celery
from kombu import Connection
from kombu.transport.base import StdChannel

from ..config.queues import DEAD_LETTER_QUEUES


def declared_queues(app: Celery[Any]) -> list[str]:
    """The task queues in declaration order, the default first, then the broker's dead-letter queues (RabbitMQ's
    "<queue>.dead": messages it gave up on, worth watching, never consumed; none on Redis)."""
    return [queue.name for queue in (*app.conf.task_queues, *DEAD_LETTER_QUEUES)]


def connect(app: Celery[Any]) -> Connection:
    """A broker connection that fails within seconds instead of retrying forever (the workers' setting)."""
    connection = app.connection_for_read()
    try:
        # A scrape or an operator's command should report "broker unreachable", not hang in kombu's retry loop.
        # interval_start is seconds as a float in kombu; the stubs say int.
        connection.ensure_connection(max_retries=1, interval_start=0.5)  # type: ignore[arg-type]
    except Exception:
        connection.release()
        raise
    return connection


def not_found(exc: BaseException) -> bool:
    # py-amqp's NotFound has reply_code 404; kombu's Redis transport raises a ChannelError with reply_code "404".
    return str(getattr(exc, "reply_code", "")) == "404"


def queue_depths(app: Celery[Any], names: list[str] | None = None) -> dict[str, int]:
    """Messages ready in each queue, in declaration order. Raises the transport's error when the broker is down."""
    depths: dict[str, int] = {}
    with connect(app) as connection:
        channel = connection.channel()
        try:
            for name in declared_queues(app) if names is None else names:
                try:
                    # The stubs type channel() as the abstract StdChannel, without the AMQP methods every transport has.
                    declared = channel.queue_declare(queue=name, passive=True)  # type: ignore[attr-defined]
                    depths[name] = int(declared.message_count)
                except connection.channel_errors as exc:
                    if not not_found(exc):
                        raise
                    # No such queue holds no messages: Redis deletes a list when its last message is taken, and
                    # RabbitMQ has no queue until a worker or a publisher declared it. A queue with messages but no
                    # consumer exists on both, so its depth is reported.
                    depths[name] = 0
                    # AMQP closes a channel after any channel error; the next declare needs a fresh one.
                    channel = _reopen(connection, channel)
        finally:
            channel.close()  # type: ignore[attr-defined]  # StdChannel: as above
    return depths


def _reopen(connection: Connection, channel: StdChannel) -> StdChannel:
    if getattr(channel, "is_open", True):
        return channel  # the Redis transport's channel stays usable
    return connection.channel()
