"""One record_run due in `countdown` seconds, then, a second later, `immediate` ones due now, all on one queue.

Arguments: the queue, a tag for the keys, the countdown, how many immediate tasks. Prints {"delayed": when the delayed
one was sent, "now": when the immediate ones were} (epoch seconds).
"""

import time

from common import arguments, diagnostics, emit

queue, tag, countdown, immediate = arguments()
record_run = diagnostics().record_run
delayed_at = time.time()
record_run.apply_async(args=[f"delayed-{tag}"], countdown=countdown, queue=queue)
time.sleep(1)
now_at = time.time()
for i in range(immediate):
    record_run.apply_async(args=[f"now-{tag}-{i}"], queue=queue)
emit({"delayed": delayed_at, "now": now_at})
