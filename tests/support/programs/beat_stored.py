"""The beat entries as Redis holds them, read through the project's ops beat helpers.

Prints {entry name: last run as ISO 8601, or null}.
"""

from common import emit, module

entries = module("ops.beat").stored_entries(module("celery_app").app)
emit({e.name: e.last_run_at and e.last_run_at.isoformat() for e in entries})
