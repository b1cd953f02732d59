"""The beat entries as Redis holds them, read through the project's beatctl module.

Prints {entry name: last run as ISO 8601, or null}.
"""

from common import emit, module

emit({e.name: e.last_run_at and e.last_run_at.isoformat() for e in module("beatctl").stored_entries()})
