"""Run each routed example task `rounds` times, waiting for every result. Arguments: rounds, the order payload."""

import uuid

from common import arguments, emit, module

rounds, order = arguments()
orders, notifications, prices = (module(f"tasks.{name}") for name in ("orders", "notifications", "prices"))
for _ in range(rounds):
    orders.process_order.delay(order).get(timeout=30)
    notifications.send_receipt.delay("metrics-" + uuid.uuid4().hex).get(timeout=30)
    prices.fetch_price.delay("EURUSD").get(timeout=30)
emit(True)
