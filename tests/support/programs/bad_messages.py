"""Bad input a worker must refuse and record while it keeps going, then a good task.

Sent: an invalid order, an unknown task name, a pickled message, an oversized one sent by name (past the publish-time
check); raised at publish time: an oversized apply_async and a queue nobody declared. Prints {"sent": {name: [id,
refusal]}, "raised": {name: "sent" or the exception}, "good": the good task's result, "seconds": its wait}.
"""

import time

from common import diagnostics, emit, module

app = module("celery_app").app
record_run = diagnostics().record_run
process_order = module("tasks.orders").process_order

big = "x" * 1_200_000  # over the default CELERY_MAX_PAYLOAD_BYTES (1 MiB)


def refusal(result):
    try:
        result.get(timeout=30)
    except Exception as exc:
        return type(exc).__name__
    return "ran"


sent, raised = {}, {}
bad_order = process_order.delay({"order_id": "o-1", "amount": "-5", "currency": "EUR", "email": "a@b.io"})
unknown = app.send_task("no.such.task", args=["x"])
# The producer may serialize with pickle; the worker accepts JSON only.
pickled = app.send_task(record_run.name, args=["pickled", 0], serializer="pickle")
# By name, so the publish-time size check in apply_async is bypassed: the worker has to refuse it.
oversized = app.send_task(record_run.name, args=["oversized-" + big, 0])
for name, result in [("bad_order", bad_order), ("unknown", unknown), ("pickle", pickled), ("oversized", oversized)]:
    sent[name] = [result.id, refusal(result)]
for name, call in [
    ("oversized_delay", lambda: record_run.apply_async(args=["big-delay-" + big, 0], task_id="big-delay")),
    ("no_queue", lambda: record_run.apply_async(args=["no-queue", 0], queue="nobody", task_id="no-queue")),
]:
    try:
        call()
        raised[name] = "sent"
    except Exception as exc:
        raised[name] = type(exc).__name__ + ": " + str(exc)
started = time.monotonic()
good = record_run.delay("good-after", 0).get(timeout=30)
emit({"sent": sent, "raised": raised, "good": good, "seconds": time.monotonic() - started})
