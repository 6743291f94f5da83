"""The recovery sweeper: jobs that nobody would otherwise touch again.

Four kinds, each found in Redis and fixed by one lifecycle script:

- a **running job whose worker is gone** (its heartbeat is older than the
  heartbeat TTL: the process, container or host died), or whose live worker
  has not claimed it in its heartbeats for a whole TTL since the run started
  (the run broke off, e.g. on a long Redis outage), goes back to its queue
  under a new dispatch and is sent again, or fails ``worker_lost`` once it has
  used its attempts — whatever the broker's visibility timeout. A job whose
  worker *died* may be a poison job (one that crashes the worker, taking the
  jobs beside it down too): it comes back **suspect** and a worker runs it alone
  (``workers/solo.py``); if its worker dies again it fails ``worker_lost``, "the
  worker died twice while running this job", instead of being retried blindly;
- a **queued job sent to a worker's own queue** (prompt-cache affinity, see
  :mod:`shared.affinity`) **whose worker is gone** goes to its shared queue under a
  new dispatch;
- a **queued job whose message never reached the broker** (the API died between
  writing it and sending it, or the send failed) is sent after a grace period;
- a **queued job past its start deadline** ends ``expired``.

A sweeper runs in every API process and every worker process, so one always
runs while anything of chatq runs; it keeps no state of its own (a restart
loses nothing), and several copies are safe: each fix is an atomic script that
checks the job is still in the state that called for it, and the job to send
is claimed atomically, so two sweepers never both requeue or send one job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import redis
from kombu.exceptions import KombuError

from shared.affinity import own_queue
from shared.dispatch import Dispatcher
from shared.keys import celery_queue_lists
from shared.lifecycle import BlockingJobs, JobRecord, Unsent
from shared.periodic import Periodic
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # worker_lost: no attempts left
    sent: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    rerouted: list[str] = field(default_factory=list)  # from a gone worker's own queue


class Sweeper:
    def __init__(self, jobs: BlockingJobs, dispatcher: Dispatcher, settings: Settings) -> None:
        self.jobs = jobs
        self.ops = jobs.ops
        self.dispatcher = dispatcher
        self.heartbeat_ttl_s = settings.worker.heartbeat_ttl_s
        self.max_attempts = settings.celery.max_attempts
        self.grace_s = settings.jobs.unsent_grace_s

    def sweep(self) -> SweepReport:
        report = SweepReport()
        self._recover_orphans(report)
        self._reroute_stranded(report)
        self._send_unsent(report)
        self._expire_due(report)
        return report

    def _recover_orphans(self, report: SweepReport) -> None:
        owners = self.jobs(self.ops.running())
        if not owners:
            return
        beats = {w.get("worker_id", ""): w
                 for w in self.jobs(self.ops.live_workers(self.heartbeat_ttl_s))}
        for job_id, worker in owners.items():
            beat = beats.get(worker)
            if beat is not None and job_id in json.loads(beat.get("running") or "[]"):
                continue  # its worker is alive and holds it
            record = self.jobs(self.ops.load(job_id)).record
            if record is None or (beat is not None and not self._abandoned(record, beat)):
                continue
            self._requeue(record, worker, report, died=beat is None)

    def _abandoned(self, record: JobRecord, beat: dict[str, str]) -> bool:
        """A live worker's beats have not listed the job for a whole TTL since its run began."""
        last_beat = float(beat.get("last_beat") or 0)
        return record.run_at is not None and last_beat > record.run_at + self.heartbeat_ttl_s

    def _requeue(self, record: JobRecord, worker: str, report: SweepReport,
                 died: bool) -> None:
        result = self.jobs(self.ops.requeue(record, worker, self.max_attempts, died))
        ctx = {"job_id": record.id, "queue": record.queue, "worker_id": worker,
               "worker_died": died}
        if result.verdict == "requeued":
            log.warning("job's worker gone; job requeued" + (" as suspect" if died else ""),
                        extra={**ctx, "dispatch": result.dispatch})
            report.requeued.append(record.id)
            self._send(Unsent(record.id, record.queue, result.dispatch, record.lane))
        elif result.verdict == "failed":
            log.error("job's worker gone; job failed after its attempts", extra=ctx)
            report.failed.append(record.id)

    def _reroute_stranded(self, report: SweepReport) -> None:
        """Jobs sent to a worker's own queue (prompt-cache affinity) whose worker is gone
        go to their shared queue under a new dispatch (sent by ``_send_unsent`` next);
        the gone worker's own queue, stale from then on, is deleted."""
        horizon = time.time() - self.heartbeat_ttl_s
        gone: set[str] = set()
        for job_id, queue, worker in self.jobs(self.ops.stranded(horizon)):
            if self.jobs(self.ops.reroute(job_id, worker)):
                log.warning("job's worker gone before it started; sent to its shared queue",
                            extra={"job_id": job_id, "queue": queue, "worker_id": worker})
                report.rerouted.append(job_id)
            gone.add(own_queue(queue, worker))
        for name in gone:
            self.jobs.redis.delete(*celery_queue_lists(name))

    def _send_unsent(self, report: SweepReport) -> None:
        for unsent in self.jobs(self.ops.claim_unsent(self.grace_s)):
            log.warning("job found without a broker message; sending it",
                        extra={"job_id": unsent.job_id, "queue": unsent.queue})
            if self._send(unsent):
                report.sent.append(unsent.job_id)

    def _send(self, unsent: Unsent) -> bool:
        """Send the job's message; when the broker refuses, it stays unsent (retried later)."""
        try:
            self.dispatcher.send(unsent.job_id, unsent.queue, unsent.dispatch, unsent.lane)
        except (KombuError, OSError, redis.RedisError) as exc:
            log.warning("broker refused a job message; will retry",
                        extra={"job_id": unsent.job_id, "error": type(exc).__name__})
            return False
        self.jobs(self.ops.sent(unsent.job_id, unsent.dispatch))
        return True

    def _expire_due(self, report: SweepReport) -> None:
        for job_id in self.jobs(self.ops.due()):
            record = self.jobs(self.ops.load(job_id)).record
            if record is not None and self.jobs(self.ops.expire(record)) == "expired":
                log.info("job expired before it started",
                         extra={"job_id": job_id, "queue": record.queue})
                report.expired.append(job_id)


class SweeperThread(Periodic):
    """Runs :meth:`Sweeper.sweep` every ``interval_s`` until stopped; never dies of an error."""

    def __init__(self, sweeper: Sweeper, interval_s: float) -> None:
        super().__init__("chatq-sweeper", interval_s, sweeper.sweep,
                         expected=(redis.RedisError,),
                         expected_message="sweep skipped: Redis unavailable",
                         expected_level=logging.DEBUG, logger=log)
        self.sweeper = sweeper
