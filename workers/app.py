"""The Celery app of a chatq worker: ``celery -A workers.app worker -Q <queue>``.

The pool child loads its model in ``worker_process_init`` (Celery's limit for
that hook is raised to the model load timeout) and keeps it for every job.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from shared.celeryconf import make_celery
from shared.keys import GENERATE_TASK
from shared.logs import set_log_context, setup_logging
from shared.registry import Registry
from shared.settings import load_settings
from workers.runtime import Runtime
from workers.tasks import run_job

log = logging.getLogger(__name__)

settings = load_settings()
celery_app = make_celery(settings, "chatq-worker")
celery_app.conf.update(
    worker_proc_alive_timeout=settings.worker.model_load_timeout_s,
    task_default_queue=settings.worker.queue,
)
# The pool child's runtime (model, store, heartbeat); empty in the parent process.
_child: dict[str, Runtime] = {}


@signals.after_setup_logger.connect
def _json_logs(**_: Any) -> None:
    setup_logging()


@signals.worker_init.connect
def _check_model_file(**_: Any) -> None:
    """Fail fast in the parent (without loading the model) if the GGUF is missing."""
    registry = Registry.load(settings.registry)
    spec = registry.for_queue(settings.worker.queue)
    set_log_context(queue=spec.queue, model=spec.name)  # every line; pool children inherit it
    log.info("worker starting", extra={"queue": spec.queue, "model": spec.name,
                                      "path": str(registry.gguf_path(spec))})


@signals.worker_process_init.connect
def _load_model(**_: Any) -> None:
    _child["runtime"] = Runtime(settings)


@signals.worker_process_shutdown.connect
def _unload(**_: Any) -> None:
    if "runtime" in _child:
        _child.pop("runtime").close()


@celery_app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True)
def generate(job_id: str) -> None:
    run_job(_child["runtime"], job_id)
