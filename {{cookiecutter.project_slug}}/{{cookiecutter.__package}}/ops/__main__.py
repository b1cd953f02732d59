"""`python -m <package>.ops SUBCOMMAND`: the ops command line without installing the project."""

import sys

from ..celery_app import app
from .cli import main

sys.exit(main(app))
