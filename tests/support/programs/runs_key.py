"""The Redis list where the diagnostics tasks record each run. Prints its key."""

from common import emit, module

emit(module("tasks.diagnostics").runs_key())
