"""Send routed example tasks without waiting for them (nobody may consume them).

Arguments: how many price refreshes, how many orders, the order payload. Prints the task ids.
"""

from common import arguments, emit, module

prices, orders, order = arguments()
fetch_price = module("tasks.prices").fetch_price
process_order = module("tasks.orders").process_order
ids = [fetch_price.delay("EURUSD").id for _ in range(prices)]
ids += [process_order.delay(order).id for _ in range(orders)]
emit(ids)
