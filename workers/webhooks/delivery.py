"""Webhook delivery: from the transition log to the receiver's endpoint.

Three parts, each safe to run in several webhook worker processes at once:

- :class:`Feeder` reads the transition log through the consumer group
  ``webhooks`` and registers a delivery for each transition a job's caller asked
  to hear about (``start``, ``completed``), with the job's view as its body. An
  entry is acknowledged once handled; one whose reader died is claimed by
  another member (registering is idempotent per job and event).
- :class:`Scheduler` claims the deliveries that are due (one per job at a time)
  and sends one Celery message for each on the webhook queue.
- :class:`Deliverer` (the Celery task's body) makes the request: signs it with
  the tenant's secret, resolves and checks the target, connects to the address
  it checked, and records the attempt: delivered, retried after a backoff, or
  given up after the retry period.

None of it runs in a GPU worker: a slow or failing receiver only ever holds a
thread of the webhook worker.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

from shared import responses
from shared.errors import UnsafeWebhook
from shared.events import Transition
from shared.lifecycle import BlockingJobs
from shared.periodic import Periodic
from shared.schemas import webhook_event
from shared.settings import WebhookSettings
from shared.transitions import TransitionReader
from shared.views import webhook_body
from shared.webhooks import (
    Attempt,
    HookStore,
    IPAddress,
    TargetPolicy,
    advance,
    check_addresses,
    resolve,
    sign,
    target,
)

log = logging.getLogger(__name__)

GROUP = "webhooks"  # the consumer group of the transition log
USER_AGENT = "chatq-webhooks/0.1"


class Feeder(Periodic):
    """Registers the deliveries the transition log calls for (each round blocks on the
    log for up to a second, so the next begins at once)."""

    def __init__(self, reader: TransitionReader, jobs: BlockingJobs, store: HookStore) -> None:
        super().__init__("chatq-hook-feeder", 0, self.feed, retry_s=1.0,
                         expected=(redis.RedisError,),
                         expected_message="transition log unreachable", logger=log)
        self.reader = reader
        self.jobs = jobs
        self.store = store

    def feed(self, block_s: float = 1.0) -> int:
        """Handle one batch of transitions; how many deliveries it registered."""
        self.store.beat(self.reader.consumer)
        registered = 0
        for entry in self.reader.read(count=100, block_s=block_s):
            registered += self.handle(entry.transition)
            self.reader.ack(entry.id)
        return registered

    def handle(self, t: Transition) -> bool:
        event = webhook_event(t.to)
        if event is None:
            return False
        loaded = self.jobs(self.jobs.ops.load(t.job_id))
        record = loaded.record
        if record is None or record.webhook is None or event not in (record.webhook_events
                                                                     or []):
            return False
        body = (responses.webhook_body(record) if record.response is not None
                else webhook_body(record, loaded.output))  # a response: OpenAI's event
        new = self.store.register(record, event, body, time.time())
        if new:
            log.info("webhook delivery registered",
                     extra={"job_id": t.job_id, "event": event.value, "queue": t.queue})
        return new


class Scheduler(Periodic):
    """Sends a delivery message for each due delivery, every ``interval_s``."""

    def __init__(self, store: HookStore, send: Callable[[str, str], None],
                 interval_s: float = 0.2) -> None:
        super().__init__("chatq-hook-scheduler", interval_s, self.tick,
                         expected=(redis.RedisError,),
                         expected_message="webhook schedule unreachable", logger=log)
        self.store = store
        self.send = send

    def tick(self) -> int:
        claims = self.store.claim(time.time())
        for job_id, token in claims:
            # A send that fails leaves the claim to lapse: it is claimed and sent again.
            self.send(job_id, token)
        return len(claims)


Post = Callable[[str, bytes, dict[str, str]], Attempt]


@dataclass
class Deliverer:
    """Makes one delivery attempt for a claimed job."""

    store: HookStore
    post: Post

    def deliver(self, job_id: str, token: str) -> Attempt | None:
        pending = self.store.begin(job_id, token, time.time())
        if pending is None:
            return None  # nothing to do: a leftover or duplicate message
        d = pending.delivery
        ctx = {"job_id": job_id, "event": d.event, "webhook_id": d.webhook_id,
               "attempt": d.attempts + 1}
        body = pending.body.encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": d.webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.store.secret(pending.tenant), d.webhook_id,
                                      timestamp, body),
        }
        attempt = self.post(pending.url, body, headers)
        after = advance(d, attempt, time.time(), self.store.hooks)
        if not self.store.settle(job_id, token, after, time.time()):
            log.warning("webhook delivery claimed again meanwhile; result dropped", extra=ctx)
        elif after.status == "delivered":
            log.info("webhook delivered", extra={**ctx, "status": attempt.status})
        else:
            log.warning("webhook delivery failed", extra={
                **ctx, "status": attempt.status, "error": attempt.error,
                "given_up": after.status == "failed", "retry_at": after.next_attempt_at})
        return attempt


class HttpPoster:
    """POSTs a delivery to an address it checked (see :mod:`shared.webhooks`)."""

    def __init__(self, hooks: WebhookSettings, policy: TargetPolicy,
                 verify: ssl.SSLContext | bool = True) -> None:
        self.policy = policy
        self.timeout_s = hooks.timeout_s
        # No proxies from the environment, no redirects, and no connection reuse: a
        # pooled connection is keyed by address, and two hosts may share one. TLS checks
        # the certificate against the URL's host name (sent as SNI), not the address.
        self.client = httpx.Client(
            timeout=httpx.Timeout(hooks.timeout_s), follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0), verify=verify)

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> Attempt:
        try:
            host, port = target(url, self.policy)
            addresses = resolve(host, port)
            check_addresses(host, addresses, self.policy)
        except UnsafeWebhook as exc:
            return Attempt(None, f"target refused: {exc.reason}", retry=False)
        except OSError as exc:
            return Attempt(None, f"could not resolve the host: {exc}")
        return self._post(url, host, addresses, body, headers)

    def _post(self, url: str, host: str, addresses: list[IPAddress], body: bytes,
              headers: dict[str, str]) -> Attempt:
        parts = urlsplit(url)
        error = "no address to connect to"
        for address in addresses:  # the next one only when this one refused the connection
            netloc = f"[{address}]" if address.version == 6 else str(address)
            if parts.port is not None:
                netloc = f"{netloc}:{parts.port}"
            direct = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            try:
                with self.client.stream(
                        "POST", direct, content=body,
                        headers={**headers, "host": parts.netloc},
                        extensions={"sni_hostname": host}) as response:
                    status = response.status_code
            except httpx.ConnectError as exc:
                error = f"could not connect to {address}: {exc}"
                continue
            except httpx.TimeoutException:
                return Attempt(None, f"no answer within {self.timeout_s:g} s")
            except httpx.HTTPError as exc:
                return Attempt(None, f"{type(exc).__name__}: {exc}")
            ok = 200 <= status < 300
            return Attempt(status, None if ok else f"answered {status}")
        return Attempt(None, error)

    def close(self) -> None:
        self.client.close()
