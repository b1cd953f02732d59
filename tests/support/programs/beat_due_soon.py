"""Store a beat entry in Redis as RedBeat does, with its last run `ago` seconds back, so beat sends it within seconds
of starting. RedBeat keeps the last run of an entry it finds stored; a new one counts its first interval from start.

Arguments: the entry's name (config/schedule.py), seconds ago. Prints the entry's Redis key.
"""

from datetime import UTC, datetime, timedelta

from common import arguments, emit, module
from redbeat.schedulers import RedBeatSchedulerEntry

name, ago = arguments()
app = module("celery_app").app
declared = app.conf.beat_schedule[name]
entry = RedBeatSchedulerEntry(
    name,
    declared["task"],
    declared["schedule"],
    args=declared["args"],
    kwargs=declared["kwargs"],
    options=declared["options"],
    app=app,
)
entry.save().reschedule(datetime.now(UTC) - timedelta(seconds=ago))
emit(entry.key)
