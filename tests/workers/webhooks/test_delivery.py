"""Webhook delivery in-process: the feeder, the schedule and the deliverer against a real
Redis, the real lifecycle scripts and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from ops.webhook_receiver import verify
from shared.lifecycle import BlockingJobs, JobRecord
from shared.schemas import JobStatus
from shared.settings import WebhookSettings
from shared.transitions import TransitionReader
from shared.webhooks import HookStore, TargetPolicy, deliveries, tenant_secret
from tests.helpers import BlackHole, Receiver
from tests.shared.test_lifecycle import CFG, L1, W1, created
from workers.webhooks.delivery import GROUP, Deliverer, Feeder, HttpPoster

HOOKS = WebhookSettings(backoff_s=0.05, backoff_max_s=0.2, timeout_s=0.5, retry_period_s=30)


@dataclass
class Hooks:
    jobs: BlockingJobs
    store: HookStore
    feeder: Feeder
    deliverer: Deliverer

    def pump(self, done: Callable[[], bool], timeout: float = 10) -> None:
        """Feed, schedule and deliver (as the threads and the task would) until ``done``."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "webhook delivery did not settle"
            self.feeder.feed(block_s=0.02)
            for job_id, token in self.store.claim(time.time()):
                self.deliverer.deliver(job_id, token)

    def settled(self, rec: JobRecord, count: int) -> Callable[[], bool]:
        def check() -> bool:
            found = deliveries(self.store.state(rec.id))
            return len(found) == count and all(d.status != "pending" for d in found)
        return check


def make_hooks(client: redis.Redis, production: bool = False,
               tenants: bool = False) -> Iterator[Hooks]:
    jobs = BlockingJobs(client, CFG)
    store = HookStore(client, CFG.keys, HOOKS, retention_s=CFG.retention_s)
    reader = TransitionReader(client, CFG.keys, GROUP, "c1")
    reader.ensure_group(start="0")
    poster = HttpPoster(HOOKS, TargetPolicy.of(HOOKS, production=production, tenants=tenants))
    yield Hooks(jobs, store, Feeder(reader, jobs, store), Deliverer(store, poster))
    poster.close()


@pytest.fixture
def hooks(redis_client: redis.Redis) -> Iterator[Hooks]:
    yield from make_hooks(redis_client)


def hooked_job(h: Hooks, url: str, events: list[str]) -> JobRecord:
    return created(h.jobs, webhook=url, webhook_events=events)


def run_to_end(h: Hooks, rec: JobRecord, status: JobStatus = JobStatus.succeeded) -> None:
    assert h.jobs(h.jobs.ops.start(rec.id, rec.queue, 1, W1, L1)).verdict == "run"
    rec.lease = L1
    h.jobs(h.jobs.ops.finish(rec, status, L1, finish_reason="stop"))


def test_start_and_completed_arrive_in_order_signed(hooks: Hooks) -> None:
    with Receiver() as receiver:
        rec = hooked_job(hooks, receiver.url, ["start", "completed"])
        assert hooks.jobs(hooks.jobs.ops.start(rec.id, rec.queue, 1, W1, L1)).verdict == "run"
        hooks.pump(hooks.settled(rec, 1))
        rec.lease = L1
        hooks.jobs(hooks.jobs.ops.finish(rec, JobStatus.succeeded, L1, finish_reason="stop"))
        hooks.pump(hooks.settled(rec, 2))
        got = receiver.wait(2)
    secret = tenant_secret(hooks.jobs.redis, CFG.keys, "acme")
    assert [r.headers["webhook-id"] for r in got] == [f"msg_{rec.id}_start",
                                                       f"msg_{rec.id}_completed"]
    assert [r.job["status"] for r in got] == ["running", "succeeded"]
    assert all(verify(secret, r.headers, r.body) for r in got)
    assert all(r.headers["content-type"] == "application/json" for r in got)
    assert got[1].job["id"] == rec.id and "webhook_deliveries" not in got[1].job
    state = deliveries(hooks.store.state(rec.id))
    assert [(d.event, d.status, d.attempts, d.last_status) for d in state] == [
        ("start", "delivered", 1, 200), ("completed", "delivered", 1, 200)]


def test_a_failing_receiver_gets_the_delivery_on_the_third_try(hooks: Hooks) -> None:
    with Receiver([500, 503]) as receiver:
        rec = hooked_job(hooks, receiver.url, ["completed"])
        run_to_end(hooks, rec)
        hooks.pump(hooks.settled(rec, 1))
        got = receiver.wait(3)
    assert len(got) == 3
    assert len({r.headers["webhook-id"] for r in got}) == 1  # the same message, retried
    assert got[0].body == got[1].body == got[2].body
    [d] = deliveries(hooks.store.state(rec.id))
    assert (d.status, d.attempts, d.last_status, d.last_error) == ("delivered", 3, 200, None)


def test_events_not_asked_for_are_not_sent(hooks: Hooks) -> None:
    with Receiver() as receiver:
        only_end = hooked_job(hooks, receiver.url, ["completed"])
        silent = created(hooks.jobs)  # no webhook at all
        run_to_end(hooks, only_end, JobStatus.failed)
        run_to_end(hooks, silent)
        hooks.pump(hooks.settled(only_end, 1))
        [got] = receiver.wait(1)
    assert got.job["status"] == "failed"
    assert hooks.store.state(silent.id) == {}


def test_a_cancelled_or_expired_job_is_completed_too(hooks: Hooks) -> None:
    with Receiver() as receiver:
        cancelled = hooked_job(hooks, receiver.url, ["start", "completed"])
        hooks.jobs(hooks.jobs.ops.cancel(cancelled))
        expired = created(hooks.jobs, webhook=receiver.url, webhook_events=["completed"],
                          expires_at=time.time() - 1)
        hooks.jobs(hooks.jobs.ops.expire(expired))
        hooks.pump(lambda: len(receiver.received) == 2)
    assert sorted(r.job["status"] for r in receiver.received) == ["cancelled", "expired"]


def test_a_transition_read_twice_is_delivered_once(hooks: Hooks) -> None:
    with Receiver() as receiver:
        rec = hooked_job(hooks, receiver.url, ["completed"])
        run_to_end(hooks, rec)
        [done] = [e for e in hooks.feeder.reader.read(block_s=0.1)
                  if e.transition.to == "succeeded"]
        # its reader died before acknowledging; another member handles it again
        assert hooks.feeder.handle(done.transition)
        assert not hooks.feeder.handle(done.transition)
        hooks.pump(hooks.settled(rec, 1))
        time.sleep(0.2)
    assert len(receiver.received) == 1


def test_a_dead_receiver_times_out_and_is_retried(hooks: Hooks) -> None:
    with BlackHole() as hole:
        rec = hooked_job(hooks, hole.url, ["completed"])
        run_to_end(hooks, rec)
        hooks.feeder.feed(block_s=0.1)
        [(job_id, token)] = hooks.store.claim(time.time())
        started = time.monotonic()
        attempt = hooks.deliverer.deliver(job_id, token)
        assert time.monotonic() - started < HOOKS.timeout_s * 3
    assert attempt is not None and attempt.error is not None and "no answer" in attempt.error
    [d] = deliveries(hooks.store.state(rec.id))
    assert (d.status, d.attempts, d.last_status) == ("pending", 1, None)
    assert d.next_attempt_at is not None


def test_production_refuses_a_loopback_target_at_delivery(redis_client: redis.Redis) -> None:
    for h in make_hooks(redis_client, production=True):
        with Receiver() as receiver:
            # e.g. a name that resolved to a public address at submit, loopback now
            rec = hooked_job(h, receiver.url.replace("http:", "https:"), ["completed"])
            run_to_end(h, rec)
            h.pump(h.settled(rec, 1))
            assert receiver.received == []
        [d] = deliveries(h.store.state(rec.id))
        assert (d.status, d.attempts) == ("failed", 1)
        assert d.last_error is not None and "127.0.0.1" in d.last_error


@pytest.mark.parametrize("production", [True, False])
def test_the_nat64_form_of_loopback_is_refused_at_delivery(
        redis_client: redis.Redis, production: bool) -> None:
    """``64:ff9b::7f00:1`` is 127.0.0.1 behind a NAT64 gateway: refused in production
    and in development with API keys, and never tried again."""
    for h in make_hooks(redis_client, production=production, tenants=True):
        rec = hooked_job(h, "https://[64:ff9b::7f00:1]:8443/hook", ["completed"])
        run_to_end(h, rec)
        h.pump(h.settled(rec, 1))
        [d] = deliveries(h.store.state(rec.id))
        assert (d.status, d.attempts) == ("failed", 1)
        assert d.last_error is not None and "target refused" in d.last_error
        assert "64:ff9b::7f00:1" in d.last_error


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=hooks.test",
                    "-addext", "subjectAltName=DNS:hooks.test"],
                   check=True, capture_output=True)
    return cert, key


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    redis_client: redis.Redis, certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, key = certificate
    # Both names resolve to the receiver's address; its certificate is for hooks.test only.
    loopback = [ipaddress.ip_address("127.0.0.1")]
    monkeypatch.setattr("workers.webhooks.delivery.resolve", lambda host, port: loopback)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    with Receiver() as receiver:
        receiver.server.socket = server_tls.wrap_socket(receiver.server.socket,
                                                        server_side=True)
        port = receiver.server.server_address[1]
        poster = HttpPoster(HOOKS, TargetPolicy.of(HOOKS, production=False), verify=trust)
        try:
            good = poster(f"https://hooks.test:{port}/hook?x=1", b"{}", {"webhook-id": "m"})
            wrong = poster(f"https://other.test:{port}/hook", b"{}", {"webhook-id": "m"})
        finally:
            poster.close()
        [got] = receiver.received
    assert good.ok and good.status == 200
    assert got.headers["host"] == f"hooks.test:{port}"  # the name, though it dialled the IP
    assert not wrong.ok and wrong.error is not None and "certificate" in wrong.error.lower()
