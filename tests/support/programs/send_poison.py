"""A task that kills its own pool process, then tasks queued behind it that must run while it crash-loops.

Arguments: the poison task's key, the list of keys to send behind it. Prints the poison task's id.
"""

from common import arguments, emit, module

poison_key, behind = arguments()
diagnostics = module("tasks.diagnostics")
poison = diagnostics.lose_worker.delay(poison_key)
for key in behind:  # queued behind the poison message: they must run while it crash-loops
    diagnostics.record_run.delay(key, 0)
emit(poison.id)
