"""The diagnostics task record_once: records its side effect once per key, then works on. Arguments: the key, the
seconds it works after the effect. Prints the task id."""

from common import arguments, diagnostics, emit

key, seconds = arguments()
emit(diagnostics().record_once.delay(key, seconds).id)
