"""Housekeeping tasks run by beat (schedule.py)."""

import logging

from ..celery_app import app
from ..runtime import deadletters

logger = logging.getLogger(__name__)


@app.task
def report_dead_letters() -> int:
    """A daily nudge: dead letters wait for a person, so say how many there are. Also applies the retention period,
    which writes apply too, for the days nothing fails."""
    deadletters.trim()
    count = deadletters.count()  # ZCARD: O(1), never loads the entries
    if count:
        logger.warning("%d dead letter(s) waiting: python -m %s.ops deadletters list", count, __package__.split(".")[0])
    return count
