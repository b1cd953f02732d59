"""`python -m <package>.ops SUBCOMMAND`: the ops command line without installing the project."""

import sys

from pydantic import ValidationError

try:
    from ..celery_app import app
except ValidationError as exc:
    # One line, like every ops error: the variable and the rule it breaks (`python -m <package>.ops.doctor` says the
    # same as its "settings" row).
    reasons = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
    sys.exit(f"error: the settings refuse to load: {reasons}")
from .cli import main

sys.exit(main(app))
