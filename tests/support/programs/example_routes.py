"""Example task name -> the queue the project's router sends it to (no queue given: task_routes decides)."""

from common import emit, module

app = module("celery_app").app
names = [
    module("tasks.orders").process_order.name,
    module("tasks.notifications").send_receipt.name,
    module("tasks.prices").fetch_price.name,
]
emit({name: app.amqp.router.route({}, name)["queue"].name for name in names})
