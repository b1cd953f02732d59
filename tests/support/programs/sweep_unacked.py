"""Sweep the Redis transport's unacknowledged index every second, as a fleet of workers would, until `count` tasks
whose key starts with `prefix` have run (and 5 s more, the time a restored copy would take to run), or `timeout`.

Arguments: timeout, the runs list's key, the key prefix, count. Prints {"sweeps": n, "visibility_timeout": s}.
"""

import json
import time

from common import arguments, emit, module

timeout, runs_key, prefix, count = arguments()
app = module("celery_app").app
client = module("runtime.redis_store").client
sweeps = 0
deadline = time.time() + timeout
with app.connection_for_write() as connection:
    channel = connection.default_channel
    done_since = None
    while time.time() < deadline:
        channel.qos.restore_visible(num=1000, interval=1)
        sweeps += 1
        runs = [json.loads(raw)["key"] for raw in client().lrange(runs_key, 0, -1)]
        if len({key for key in runs if key.startswith(prefix)}) >= count:
            done_since = done_since or time.time()
            if time.time() - done_since > 5:  # a restored copy would be taken and run within this
                break
        time.sleep(1)
emit({"sweeps": sweeps, "visibility_timeout": channel.visibility_timeout})
