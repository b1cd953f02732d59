"""send_receipt for an order id; it touches all three Redis users: the broker (Redis variant), the result backend
and redis_store. Arguments: the order id, whether to wait for the result. Prints {"id": ..., "result": ... or null}.
"""

from common import arguments, emit, module

order_id, wait = arguments()
result = module("tasks.notifications").send_receipt.delay(order_id)
emit({"id": result.id, "result": result.get(timeout=60) if wait else None})
