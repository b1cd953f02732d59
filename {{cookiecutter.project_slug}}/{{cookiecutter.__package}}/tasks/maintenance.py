"""Housekeeping tasks run by beat (schedule.py)."""

import logging

from .. import deadletters
from ..celery_app import app

logger = logging.getLogger(__name__)


@app.task
def report_dead_letters() -> int:
    """A daily nudge: dead letters wait for a person, so say how many there are. A re-run only logs again."""
    count = len(deadletters.entries())
    if count:
        logger.warning("%d dead letter(s) waiting: python -m %s.deadletters list", count, __package__.split(".")[0])
    return count
