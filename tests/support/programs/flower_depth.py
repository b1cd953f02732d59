"""A queue's messages as Flower's broker page reads them: its own Redis client, told the key prefix by the app.

Argument: the queue name. Prints the message count.
"""

import asyncio

from common import arguments, emit, module
from flower.utils.broker import Broker

(queue,) = arguments()
app = module("celery_app").app
url = app.connection_for_read().as_uri(include_password=True)
broker = Broker(url, broker_options=app.conf.broker_transport_options)
emit(asyncio.run(broker.queues([queue]))[0]["messages"])
