"""Send record_run calls and report whether the producer refused them.

Arguments: a list of calls ({"key": str, optional "seconds", "countdown", "queue", "exchange", "routing_key"}), and
the word to print when all were sent. Prints that word, or "<ExceptionType>: <message>" for the first refusal.
"""

from common import arguments, diagnostics, emit

calls, sent = arguments()
record_run = diagnostics().record_run
try:
    for call in calls:
        args = [call["key"], call["seconds"]] if "seconds" in call else [call["key"]]
        options = {name: call[name] for name in ("countdown", "queue", "exchange", "routing_key") if name in call}
        record_run.apply_async(args=args, **options)
    emit(sent)
except Exception as exc:
    emit(f"{type(exc).__name__}: {exc}")
