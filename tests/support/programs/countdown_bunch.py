"""`count` record_run tasks of `seconds` each, all due together after `countdown` seconds, on one queue.

Arguments: key prefix, count, seconds, countdown, queue. Prints the time they were sent (epoch seconds).
"""

import time

from common import arguments, diagnostics, emit

prefix, count, seconds, countdown, queue = arguments()
record_run = diagnostics().record_run
for i in range(count):
    record_run.apply_async(args=[f"{prefix}{i}", seconds], countdown=countdown, queue=queue)
emit(time.time())
