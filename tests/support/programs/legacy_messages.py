"""The earlier deployment: the same code without the broker's key prefix queues messages on the default queue.

Arguments: keys to send, keys to send with priority 9. Then one message is delivered and never acknowledged: the
process exits without a shutdown, so it stays in the old `unacked` hash. Prints "taken".
"""

import os

from common import arguments, diagnostics, emit, module

plain, prioritised = arguments()
app = module("celery_app").app
record_run = diagnostics().record_run
app.conf.broker_transport_options = {**app.conf.broker_transport_options, "global_keyprefix": ""}
for key in plain:
    record_run.apply_async(args=[key], queue="default")
for key in prioritised:
    record_run.apply_async(args=[key], queue="default", priority=9)
with app.connection_for_write() as connection:
    assert connection.default_channel.basic_get("default", no_ack=False) is not None
    emit("taken")
    os._exit(0)
