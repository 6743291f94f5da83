"""One Celery configuration for the API (which only sends), the workers and Flower.

Built from :class:`shared.settings.Settings`, so the broker transport options
(visibility timeout above all) and time limits are the same in every process.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from shared.redis_conn import celery_broker
from shared.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    c = settings.celery
    broker, sentinel_options = celery_broker(settings.broker_url)
    return {
        "broker_url": broker,
        "broker_transport_options": {
            **sentinel_options,
            "visibility_timeout": c.visibility_timeout_s,
            # Redis priority lists (0, 3, 6, 9) are polled in that order: the lanes of
            # shared.lifecycle.LANES (interactive, past a fair share, batch, past it).
            "queue_order_strategy": "priority",
        },
        "broker_connection_retry_on_startup": True,
        # chatq keeps job state in its own store; Celery results are not used.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Never lose a job: ack after the task ran, requeue if the child dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_pool": "prefork",
        "task_soft_time_limit": c.soft_time_limit_s,
        "task_time_limit": c.hard_time_limit_s,
        # Task events, for Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_default_queue": "cpu",
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def make_celery(settings: Settings, name: str = "chatq") -> Celery:
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app
