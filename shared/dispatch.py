"""Handing jobs to the broker: one Celery message per dispatch of a job.

The API sends a job's first message; the recovery sweeper (in the API and the
workers) sends the message of a requeued job and of a job whose first send never
happened. Either side only *sends*, by task name: nothing here imports the
worker code. The message carries the job id and its dispatch number; the task
id is ``{job_id}.{dispatch}``, so Flower and Celery's logs name the job.
"""

from __future__ import annotations

from celery import Celery

from shared.celeryconf import make_celery
from shared.keys import GENERATE_TASK, task_id
from shared.settings import Settings


class Dispatcher:
    """Sends job messages (blocking: call it from a thread in async code)."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.celery: Celery = make_celery(settings, name)
        self.celery.conf.task_publish_retry_policy = {
            "max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5,
        }

    def send(self, job_id: str, queue: str, dispatch: int, lane: int) -> None:
        """``lane``: the job's Celery priority (``shared.lifecycle.LANES``; Celery's Redis
        transport polls its lists for 0, 3, 6, 9 in that order)."""
        self.celery.send_task(GENERATE_TASK, args=[job_id, dispatch], queue=queue,
                              task_id=task_id(job_id, dispatch), priority=lane)

    def close(self) -> None:
        self.celery.close()
