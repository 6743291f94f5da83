"""One event's delivery state and its retries (see :mod:`shared.webhooks`): kept as
JSON in the job's hooks hash, advanced after each attempt with a doubling backoff
until delivered or past the retry period."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from shared.schemas import WebhookDelivery, WebhookEvent, utc
from shared.settings import WebhookSettings

JOB_EVENTS = tuple(e.value for e in WebhookEvent)  # the order a job raises them in
# A batch's end (OpenAI's event types); a batch raises one, under its own id.
BATCH_EVENTS = ("batch.completed", "batch.failed", "batch.cancelled", "batch.expired")
EVENTS = JOB_EVENTS + BATCH_EVENTS


@dataclass(frozen=True)
class Delivery:
    """One event's delivery, as its state is kept (times in unix seconds)."""

    event: str
    webhook_id: str
    registered_at: float
    status: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_attempt_at: float | None = None
    next_attempt_at: float | None = None
    delivered_at: float | None = None

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, raw: str) -> Delivery:
        values = json.loads(raw)
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})

    def view(self) -> WebhookDelivery:
        return WebhookDelivery(
            event=WebhookEvent(self.event), webhook_id=self.webhook_id,
            status=self.status,
            attempts=self.attempts, last_status=self.last_status, last_error=self.last_error,
            last_attempt_at=utc(self.last_attempt_at),
            next_attempt_at=utc(self.next_attempt_at), delivered_at=utc(self.delivered_at),
        )


@dataclass(frozen=True)
class Attempt:
    """How one request went: the receiver's status, or why there was none."""

    status: int | None
    error: str | None = None
    retry: bool = True  # False: never try again (the target was refused)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def advance(d: Delivery, attempt: Attempt, now: float, hooks: WebhookSettings) -> Delivery:
    """The delivery after an attempt: delivered, due again after a backoff, or given up
    once its next try would fall past the retry period."""
    tried = replace(d, attempts=d.attempts + 1, last_status=attempt.status,
                    last_error=attempt.error, last_attempt_at=now, next_attempt_at=None)
    if attempt.ok:
        return replace(tried, status="delivered", last_error=None, delivered_at=now)
    delay = min(hooks.backoff_s * 2 ** (tried.attempts - 1), hooks.backoff_max_s)
    if not attempt.retry or now + delay > d.registered_at + hooks.retry_period_s:
        return replace(tried, status="failed")
    return replace(tried, next_attempt_at=now + delay)


def deliveries(state: dict[str, str]) -> list[WebhookDelivery]:
    """A job's deliveries from its hooks hash, in event order."""
    return [Delivery.load(state[f"ev:{e}"]).view() for e in JOB_EVENTS if f"ev:{e}" in state]
