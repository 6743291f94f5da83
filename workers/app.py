"""The Celery app of a chatq worker: ``celery -A workers.app worker -Q <queue>``.

The worker runs Celery's thread pool with one thread per slot of its model
(``slots`` in the registry), so up to ``slots`` jobs run at once and the engine
generates them together on the one resident model. With late acknowledgement,
the broker hands the worker a new message only when a slot is free. The model
is loaded once per process, in ``worker_init`` (before any message is taken;
the thread pool never forks).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from shared.affinity import own_queue
from shared.celeryconf import make_celery
from shared.errors import ConfigError
from shared.keys import GENERATE_TASK
from shared.logs import set_log_context, setup_logging
from shared.registry import LlamaBuild, ModelSpec, Registry
from shared.settings import load_settings
from workers.runtime import Runtime, worker_identity
from workers.solo import SoloGate, is_suspect
from workers.tasks import run_job

log = logging.getLogger(__name__)

settings = load_settings()


def _refuse(message: str, **fields: str) -> None:
    """End the worker with a JSON log line (Celery logs and swallows exceptions raised
    in its signal handlers, which would leave a worker up with no model)."""
    setup_logging()  # Celery has not set its logging up yet
    log.error("worker refused to start: %s", message,
              extra={"queue": settings.worker.queue, "registry": str(settings.registry),
                     **fields})
    raise SystemExit(1)


def _registry() -> tuple[Registry, ModelSpec]:
    try:
        registry = Registry.load(settings.registry)
        return registry, registry.for_queue(settings.worker.queue)
    except ConfigError as exc:
        _refuse(exc.message)
        raise  # not reached


# The registry is read once per process: the slot count below, the start checks and
# the runtime (worker_init) all come from this one copy.
_registry_, _spec = _registry()
celery_app = make_celery(settings, "chatq-worker")
celery_app.conf.update(
    task_default_queue=settings.worker.queue,
    worker_pool="threads",
    worker_concurrency=_spec.slots,
    # The thread pool has no time limits: each job's deadline is the worker's own
    # (workers.tasks), so Celery is not asked for limits it cannot enforce.
    task_soft_time_limit=None,
    task_time_limit=None,
)
# The process's runtime (model, store, heartbeat, sweeper), made in worker_init.
_process: dict[str, Runtime] = {}
_solo = SoloGate()  # a suspect job (its worker died running it) runs alone


@signals.after_setup_logger.connect
def _json_logs(**_: Any) -> None:
    setup_logging()


@signals.celeryd_after_setup.connect
def _consume_own_queue(instance: Any, **_: Any) -> None:
    """Beside the shared queue, consume this worker's own: a conversation's next turn is
    sent there while this worker's prompt cache holds its last one (shared.affinity)."""
    if _spec.upstream is None and _spec.prompt_cache:
        own = own_queue(settings.worker.queue, worker_identity(settings.worker.queue))
        instance.app.amqp.queues.select_add(own)


@signals.worker_init.connect
def _load(**_: Any) -> None:
    """Before any message is taken: check that this machine can serve the model (file,
    llama.cpp build; for an upstream, its key variable), then load it once."""
    setup_logging()  # Celery sets its logging up later; llama.cpp speaks JSON from here on
    try:
        build = None if _spec.upstream else LlamaBuild.detect()
        _registry_.require([_spec.queue], build=build)
    except ConfigError as exc:
        _refuse(exc.message)
    set_log_context(queue=_spec.queue, model=_spec.name)  # on every line of the process
    serves: dict[str, Any] = {"load_options": _spec.llama_kwargs()}
    if _spec.upstream is not None:
        serves = {"upstream_kind": _spec.upstream.kind, "upstream_url": _spec.upstream.public_url,
                  "upstream_model": _spec.upstream.model}
    log.info("worker starting", extra={"queue": _spec.queue, "model": _spec.name,
                                      "slots": _spec.slots, **serves})
    try:
        _process["runtime"] = Runtime(settings, _registry_)
    except Exception as exc:
        log.exception("worker could not load its model")
        _refuse(f"the model could not be loaded: {exc}")


@signals.worker_shutdown.connect
def _unload(**_: Any) -> None:
    if "runtime" in _process:
        _process.pop("runtime").close()


@celery_app.task(name=GENERATE_TASK, acks_late=True, reject_on_worker_lost=True)
def generate(job_id: str, dispatch: int = 1) -> None:
    runtime = _process["runtime"]
    with _solo.admit(alone=is_suspect(runtime.jobs, job_id)):
        run_job(runtime, job_id, dispatch)
