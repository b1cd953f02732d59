"""A task that kills its own pool process, then tasks queued behind it that must run while it crash-loops.

Arguments: the poison task's key, the list of keys to send behind it. Prints the poison task's id.
"""

from common import arguments, diagnostics, emit

poison_key, behind = arguments()
diagnostics = diagnostics()
poison = diagnostics.lose_worker.delay(poison_key)
for key in behind:  # queued behind the poison message: they must run while it crash-loops
    diagnostics.record_run.delay(key, 0)
emit(poison.id)
