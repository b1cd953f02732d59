"""Logging for every process: one JSON object per line in production, plain text in development.

LOG_FORMAT=json|text (settings.py; `.env.example` sets text for development). Worker and beat are configured
through Celery's `setup_logging` signal (celery_app.py), gunicorn through `logconfig_dict` (gunicorn.conf.py), so all
three write the same shape.
JSON because log pipelines (Loki, CloudWatch, ELK) index fields: `task_id`, `task_name`, `queue`, `duration_ms` and
`outcome` become searchable without parsing free text.
"""

import json
import logging
import logging.config
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and is written as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    converter = staticmethod(time.gmtime)  # UTC timestamps, matching the "Z" below

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        entry.update({key: value for key, value in record.__dict__.items() if key not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"


def logging_config(fmt: str, level: str | int = "INFO") -> dict[str, Any]:
    """A dictConfig for the chosen format (settings.log_format), used by Celery's processes and by gunicorn."""
    if fmt not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT {fmt!r} must be json or text")
    formatter = {"()": JsonFormatter} if fmt == "json" else {"format": TEXT_FORMAT}
    config: dict[str, Any] = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default"}},
        "root": {"handlers": ["stderr"], "level": logging.getLevelName(level) if isinstance(level, int) else level},
    }
    if fmt == "json":
        # The task_log line carries id, name, queue, duration and outcome; Celery's own "Task ... succeeded" line
        # would be a second line per task. Failures are still logged by Celery at ERROR, with the traceback.
        config["loggers"] = {"celery.app.trace": {"level": "WARNING"}}
    return config


def configure(fmt: str, level: str | int = "INFO") -> None:
    logging.config.dictConfig(logging_config(fmt, level))
