"""What runs inside the worker and beat processes: signal handlers, worker steps, the heartbeat, logging, task
counters, the Redis-backed stores (dead letters, idempotency claims) and the beat scheduler.
"""
