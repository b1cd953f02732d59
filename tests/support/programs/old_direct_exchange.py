"""As an earlier version did, through kombu: the quorum queue bound to a direct exchange of its own name, and a task
published through that exchange by an "old" process (the same message Celery sends, routed the old way).

Arguments: the queue, the key the old task records. Prints true.
"""

from common import arguments, diagnostics, emit, module
from kombu import Exchange, Queue

queue, key = arguments()
app = module("celery_app").app
new = next(q for q in module("config.queues").TASK_QUEUES if q.name == queue)
old_exchange = Exchange(queue, type="direct")
with app.connection_for_write() as connection:
    Queue(queue, old_exchange, routing_key=queue, queue_arguments=new.queue_arguments)(
        connection.default_channel
    ).declare()
diagnostics().record_run.apply_async(args=[key], exchange=queue, routing_key=queue)
emit(True)
