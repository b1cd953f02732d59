"""The receipts outbox as the project's own Redis client reads it. Prints the list."""

from common import emit, module

redis_store = module("runtime.redis_store")
emit(redis_store.client().lrange(redis_store.key("outbox", "receipts"), 0, -1))
