"""Structured (JSON) logging: one object per line, with the record's extra fields.

Call sites pass context as ``extra={"job_id": ..., "queue": ..., "model": ...}``.
Lines that others write get the same fields where they can be known: a worker
sets its queue and model once (:func:`set_log_context`), and Celery's own lines
about a ``chatq.generate`` task get its job id (:class:`ContextFilter`).
Uvicorn's loggers and Python warnings go through the same JSON handler.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from shared.keys import GENERATE_TASK, job_of_task

# color_message: uvicorn's ANSI-coloured duplicate of msg.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Fields every line of this process carries (a worker's queue and model).
_process_context: dict[str, str] = {}

# Loggers that may bring their own handlers; those are made to propagate to ours instead.
_ADOPTED = ("uvicorn", "uvicorn.error", "uvicorn.access", "tornado.access",
            "tornado.application", "tornado.general")


def set_log_context(**fields: str) -> None:
    """Fields added to every log line of this process (kept across fork)."""
    _process_context.update(fields)


def _celery_job_id(record: logging.LogRecord) -> str | None:
    """The job id of a Celery log line about a ``chatq.generate`` task, if it is one
    (from the task id, see :func:`shared.keys.task_id`)."""
    data = getattr(record, "data", None)
    if isinstance(data, dict) and data.get("name") == GENERATE_TASK and data.get("id"):
        return job_of_task(str(data["id"]))
    if "celery" not in sys.modules:
        return None
    from celery._state import get_current_task

    task = get_current_task()
    if task is not None and task.name == GENERATE_TASK and task.request.id:
        return job_of_task(str(task.request.id))
    return None


class ContextFilter(logging.Filter):
    """Adds the process context and, on Celery's task lines, the job id."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _process_context.items():
            if not hasattr(record, name):
                setattr(record, name, value)
        if not hasattr(record, "job_id"):
            job_id = _celery_job_id(record)
            if job_id is not None:
                record.job_id = job_id
        return True


def setup_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("CHATQ_LOG_LEVEL", "INFO"))
    for name in _ADOPTED:
        adopted = logging.getLogger(name)
        if adopted.handlers:  # a logger silenced on purpose (--no-access-log) stays silent
            adopted.handlers.clear()
            adopted.propagate = True
    logging.captureWarnings(True)
