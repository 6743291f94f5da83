"""The webhook worker: ``celery -A workers.webhooks.app worker -Q webhooks``.

A small process of its own, apart from the GPU workers (it loads no model):
Celery's thread pool makes the deliveries (``CHATQ_WEBHOOKS__CONCURRENCY`` at
once), and two threads started with the worker feed it: the feeder reads the
transition log through the consumer group ``webhooks`` and the scheduler sends a
message for each due delivery (see :mod:`workers.webhooks.delivery`). Run as many copies as
needed: they share the consumer group and the schedule, and a copy that dies
loses nothing (its unacknowledged transitions and lapsed claims are taken up by
the others).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import redis
from celery import signals
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from shared.celeryconf import make_celery
from shared.keys import WEBHOOK_TASK
from shared.lifecycle import BlockingJobs, store_config
from shared.logs import set_log_context, setup_logging
from shared.redis_conn import blocking_client
from shared.settings import Settings, load_settings
from shared.transitions import TransitionReader
from shared.webhooks import HookStore, TargetPolicy
from workers.webhooks.delivery import GROUP, Deliverer, Feeder, HttpPoster, Scheduler

log = logging.getLogger(__name__)

settings = load_settings()
celery_app = make_celery(settings, "chatq-webhooks")
celery_app.conf.update(
    task_default_queue=settings.webhooks.queue,
    worker_pool="threads",
    worker_concurrency=settings.webhooks.concurrency,
    worker_prefetch_multiplier=1,
    # A delivery's claim in Redis, not the broker, brings back a lost one (a late
    # ack would redeliver long-held messages after the visibility timeout).
    task_acks_late=False,
    task_reject_on_worker_lost=False,
    task_soft_time_limit=None,
    task_time_limit=None,
)


@dataclass
class HookRuntime:
    """What one webhook worker process holds."""

    redis: redis.Redis
    feeder: Feeder
    scheduler: Scheduler
    deliverer: Deliverer
    poster: HttpPoster

    @classmethod
    def build(cls, settings: Settings) -> HookRuntime:
        client = blocking_client(
            settings.redis_url, decode_responses=True, health_check_interval=10,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=5),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        config = store_config(settings)
        store = HookStore(client, config.keys, settings.webhooks, config.retention_s)
        consumer = f"webhooks@{socket.gethostname()}:{os.getpid()}"
        reader = TransitionReader(client, config.keys, GROUP, consumer)
        # From the oldest kept entry: jobs that finished while no webhook worker ran
        # are delivered too (registering is idempotent, so nothing twice).
        reader.ensure_group(start="0")
        poster = HttpPoster(settings.webhooks, TargetPolicy.from_settings(settings))
        return cls(redis=client, feeder=Feeder(reader, BlockingJobs(client, config), store),
                   scheduler=Scheduler(store, _send), deliverer=Deliverer(store, poster),
                   poster=poster)

    def start(self) -> None:
        self.feeder.start()
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.stop()
        self.feeder.stop()
        self.poster.close()
        self.redis.close()


_process: dict[str, HookRuntime] = {}


def _send(job_id: str, token: str) -> None:
    celery_app.send_task(WEBHOOK_TASK, args=[job_id, token], queue=settings.webhooks.queue)


@signals.after_setup_logger.connect
def _json_logs(**_: Any) -> None:
    setup_logging()


@signals.worker_init.connect
def _start(**_: Any) -> None:
    set_log_context(queue=settings.webhooks.queue)
    log.info("webhook worker starting", extra={"queue": settings.webhooks.queue,
                                              "concurrency": settings.webhooks.concurrency})
    runtime = HookRuntime.build(settings)
    runtime.start()
    _process["runtime"] = runtime


@signals.worker_shutdown.connect
def _stop(**_: Any) -> None:
    if "runtime" in _process:
        _process.pop("runtime").close()


@celery_app.task(name=WEBHOOK_TASK, ignore_result=True)
def deliver(job_id: str, token: str) -> None:
    _process["runtime"].deliverer.deliver(job_id, token)
