"""The Redis list where the diagnostics tasks record each run. Prints its key."""

from common import diagnostics, emit

emit(diagnostics().runs_key())
