"""Send a backlog of normal tasks, then urgent ones, from one producer process publishing in a loop.

Arguments: the backlog {"queue", "count", "seconds", "prefix"} (record_run tasks that each run `seconds`), then the
urgent tasks {"queue", "count", "prefix"} (record_run tasks that run at once, so their recorded "at" is their start).
Either may carry a message "priority" (to try the broker's message priorities against the same backlog).
Prints {"backlog_send_s": seconds spent sending the backlog, "urgent": {key: epoch seconds just before it was sent}}.
"""

import time

from common import arguments, diagnostics, emit

backlog, urgent = arguments()
record_run = diagnostics().record_run
began = time.time()
for n in range(backlog["count"]):
    record_run.apply_async(
        args=[f"{backlog['prefix']}{n}", backlog["seconds"]], queue=backlog["queue"], priority=backlog.get("priority")
    )
backlog_send_s = time.time() - began
sent = {}
for n in range(urgent["count"]):
    key = f"{urgent['prefix']}{n}"
    sent[key] = time.time()
    record_run.apply_async(args=[key], queue=urgent["queue"], priority=urgent.get("priority"))
emit({"backlog_send_s": round(backlog_send_s, 2), "urgent": sent})
