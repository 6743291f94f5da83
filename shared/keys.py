"""Every Redis key and channel chatq uses, in one place.

All keys start with the configured prefix (``chatq`` by default), so one Redis
can serve several deployments. Celery's own queues (one Redis list per queue
name, ``cpu``, ``gpu0``...) are named by the model registry, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Name of the Celery task the workers register and the API sends by name
# (the API never imports the worker code).
GENERATE_TASK = "chatq.generate"
# The webhook worker's delivery task (its own queue, see shared.settings.WebhookSettings).
WEBHOOK_TASK = "chatq.webhook"


def task_id(job_id: str, dispatch: int) -> str:
    """The Celery task id of a job's message: ``{job_id}.{dispatch}`` (job ids hold no dot)."""
    return f"{job_id}.{dispatch}"


def job_of_task(task: str) -> str:
    """The job id inside a task id made by :func:`task_id`."""
    return task.rpartition(".")[0] or task

# Celery's Redis transport keeps a queue as a list named by the queue, plus one
# list per priority step named ``{queue}\x06\x16{step}`` (kombu's PRIORITY_STEPS).
CELERY_PRIORITY_SEP = "\x06\x16"
CELERY_PRIORITY_STEPS = (3, 6, 9)


def celery_queue_lists(queue: str) -> list[str]:
    """The broker lists holding a Celery queue's messages; its depth is the sum of their LLENs."""
    return [queue, *(f"{queue}{CELERY_PRIORITY_SEP}{step}" for step in CELERY_PRIORITY_STEPS)]


@dataclass(frozen=True)
class Keys:
    prefix: str = "chatq"

    def job(self, job_id: str) -> str:
        """Hash: the job record (status, request, usage, timings...)."""
        return f"{self.prefix}:job:{job_id}"

    def rate_window(self, tenant: str, kind: str, window: int) -> str:
        """Integer: the tenant's ``requests`` or ``tokens`` in one minute (api.ratelimits)."""
        return f"{self.prefix}:rate:{tenant}:{kind}:{window}"

    def usage(self, tenant: str, day: int) -> str:
        """Hash: a tenant's usage on one day (days since 1970, UTC), written by the finish
        script (``account_tenant`` in shared/lua/lib.lua builds the same name):
        ``requests|{model}``, ``prompt_tokens|{model}``, ``completion_tokens|{model}``."""
        return f"{self.prefix}:usage:{tenant}:{day}"

    def rate_active(self, tenant: str) -> str:
        """Set: the tenant's unfinished job ids, for its concurrent-jobs limit."""
        return f"{self.prefix}:rate:{tenant}:active"

    def output(self, job_id: str) -> str:
        """String: the generated text so far (APPENDed by the worker)."""
        return f"{self.prefix}:job:{job_id}:out"

    def replay(self, job_id: str) -> str:
        """List: the replay log of the job's stream events (JSON), bounded, expires with the job."""
        return f"{self.prefix}:job:{job_id}:log"

    def channel(self, job_id: str) -> str:
        """Pub/sub channel: live stream events of one job."""
        return f"{self.prefix}:chan:{job_id}"

    def hub_anchor(self) -> str:
        """Pub/sub channel nobody publishes on: each API process's stream hub holds it so
        its connection stays in subscribed mode while it follows no job."""
        return f"{self.prefix}:hub"

    def cancel(self, job_id: str) -> str:
        """String flag: set when the job is cancelled; the worker checks it between tokens."""
        return f"{self.prefix}:job:{job_id}:cancel"

    def cancels(self) -> str:
        """Pub/sub channel: ids of running jobs asked to stop; workers stop them at once
        (the cancel flag stays, read at each write of the job's tokens)."""
        return f"{self.prefix}:cancels"

    def conversation_deletes(self) -> str:
        """Pub/sub channel: conversations deleted through the API, as JSON
        ``{"tenant": ..., "conversation_id": ...}``; workers drop what their prompt
        cache holds of them."""
        return f"{self.prefix}:conv-deleted"

    def tombstone(self, job_id: str) -> str:
        """String: left behind when a job record expires, so its id answers 410, not 404."""
        return f"{self.prefix}:gone:{job_id}"

    def waiting(self, queue: str) -> str:
        """Sorted set: ids of the queue's jobs not yet started, scored by rank (priority
        band + submit time): ZRANK is a job's queue position."""
        return f"{self.prefix}:waiting:{queue}"

    def running(self) -> str:
        """Hash: job id -> id of the worker running it (the recovery sweeper's list)."""
        return f"{self.prefix}:running"

    def unsent(self) -> str:
        """Sorted set: queued jobs whose broker message is not confirmed yet, scored by
        when they were created or requeued (found and sent by the recovery sweeper)."""
        return f"{self.prefix}:unsent"

    def expiry(self) -> str:
        """Sorted set: queued jobs scored by the time they must have started by."""
        return f"{self.prefix}:expiry"

    def transitions(self) -> str:
        """Stream: every state change of every job (see shared.events.Transition),
        read by consumer groups with acknowledgement; capped (approximately)."""
        return f"{self.prefix}:transitions"

    def affinity(self, queue: str, tenant: str, turn: str) -> str:
        """String: the id of the worker whose prompt cache holds a conversation's last
        turn (``turn`` from :func:`shared.affinity.next_turn`), with a TTL."""
        return f"{self.prefix}:affinity:{queue}:{tenant}:{turn}"

    def routed(self) -> str:
        """Sorted set: queued jobs whose message went to one worker's own queue (for its
        prompt cache), scored by when; the sweeper sends a dead worker's to the shared queue."""
        return f"{self.prefix}:routed"

    def workers(self) -> str:
        """Sorted set: worker ids scored by their last heartbeat (unix seconds)."""
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        """Hash: one worker's heartbeat (queue, model, pid, loaded_at, jobs_done...)."""
        return f"{self.prefix}:worker:{worker_id}"

    def queue_stats(self, queue: str) -> str:
        """Hash: a queue's lifetime counters, written by the finish script (see shared.opstats):
        ``jobs|{status}|{model}``, ``tokens|{model}``, ``prompt_tokens|{model}``,
        ``hist|{metric}|{le}|{model}`` (per-bucket counts) and ``hsum|{metric}|{model}``."""
        return f"{self.prefix}:stats:{queue}"

    def queue_recent(self, queue: str) -> str:
        """List: compact JSON of the queue's most recent finished jobs, newest first, capped."""
        return f"{self.prefix}:stats:{queue}:recent"

    # --- async callers: webhooks, idempotent submits ---------------------------

    def hooks(self, job_id: str) -> str:
        """Hash: a job's webhook deliveries (see shared.webhooks): ``url``, ``tenant``,
        ``ev:{event}`` (JSON state of each event's delivery), ``body:{event}`` (what is
        sent, the same on every retry), ``claim``/``phase`` (the delivery in flight)."""
        return f"{self.prefix}:hooks:{job_id}"

    def hooks_due(self) -> str:
        """Sorted set: job ids with a webhook delivery to make, scored by when (for a
        delivery in flight: when its claim lapses and it is sent again)."""
        return f"{self.prefix}:hooks-due"

    def webhook_worker(self, consumer: str) -> str:
        """String with a TTL: a webhook worker (its consumer name) is reading the
        transition log; refreshed at every read (readiness and health checks)."""
        return f"{self.prefix}:webhooks:worker:{consumer}"

    def webhook_secret(self, tenant: str) -> str:
        """String: the tenant's webhook signing secret (``whsec_...``), made once."""
        return f"{self.prefix}:webhook-secret:{tenant}"

    def idempotency(self, tenant: str, key_digest: str) -> str:
        """String (JSON): a submit's ``Idempotency-Key`` (by its SHA-256): the body's hash
        and the job it made (empty while that submit is in progress); lives 24 h."""
        return f"{self.prefix}:idem:{tenant}:{key_digest}"

    def batch_stats(self) -> str:
        """Hash: Batch API counters, each raised once by the process whose MongoDB update
        won the change: ``batches:{status}`` (batches that ended so) and
        ``lines:{outcome}`` (lines written: completed, failed, expired, cancelled)."""
        return f"{self.prefix}:batch-stats"

    # --- conversations (MongoDB) ----------------------------------------------

    def outbox(self) -> str:
        """List: conversation writes (JSON) that MongoDB did not take yet; oldest first.

        A worker pushes a job's turn here when MongoDB is down; the workers'
        drainer writes them (idempotently) once it is back.
        """
        return f"{self.prefix}:conv:outbox"

    def outbox_dead(self) -> str:
        """List: outbox entries MongoDB refused for good (e.g. a conversation id
        taken by another tenant), kept for an operator instead of retried forever."""
        return f"{self.prefix}:conv:outbox:dead"
