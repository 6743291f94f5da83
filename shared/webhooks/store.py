"""Delivery state in Redis (the webhook worker's side; see :mod:`shared.webhooks`),
changed only through the scripts of ``shared/lua/hooks/``, and the tenants' secrets."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from shared.keys import Keys
from shared.lifecycle import JobRecord
from shared.settings import WebhookSettings
from shared.webhooks.deliveries import EVENTS, Delivery
from shared.webhooks.signing import new_secret, webhook_id

PICKUP_LEASE_S = 60.0  # a claimed delivery not begun by then is claimed and sent again
WORKER_BEAT_TTL_S = 15  # a webhook worker that stopped reading is gone after this
LUA_DIR = Path(__file__).parent.parent / "lua" / "hooks"


@dataclass(frozen=True)
class Pending:
    """The delivery a message is to make now."""

    delivery: Delivery
    body: str
    url: str
    tenant: str


@dataclass
class HookStore:
    """Delivery state in Redis, changed only through the scripts of ``shared/lua/hooks``."""

    client: redis.Redis
    keys: Keys
    hooks: WebhookSettings
    retention_s: float  # a finished job's record is kept this long
    _scripts: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._scripts = {p.stem: self.client.register_script(p.read_text())
                         for p in LUA_DIR.glob("*.lua")}

    @property
    def run_lease_s(self) -> float:
        """How long a begun delivery holds its job (then it is claimed again)."""
        return 2 * self.hooks.timeout_s + 30

    def register(self, record: JobRecord, event: str, body: str, now: float) -> bool:
        assert record.webhook is not None
        keys, args = registration(self.keys, self.hooks, self.retention_s, record.id,
                                  record.tenant, record.webhook, event, body, now)
        return bool(self._scripts["register"](keys=keys, args=args))

    def claim(self, now: float, limit: int = 100) -> list[tuple[str, str]]:
        flat = self._scripts["claim"](
            keys=(self.keys.hooks_due(),),
            args=(now, PICKUP_LEASE_S, limit, self.keys.hooks(""), secrets.token_hex(8)))
        return list(zip(flat[::2], flat[1::2], strict=True))

    def begin(self, job_id: str, token: str, now: float) -> Pending | None:
        reply = self._scripts["begin"](
            keys=(self.keys.hooks(job_id), self.keys.hooks_due()),
            args=(job_id, token, now, self.run_lease_s, *EVENTS))
        if not reply:
            return None
        _, state, body, url, tenant = reply
        return Pending(Delivery.load(state), body, url, tenant)

    def settle(self, job_id: str, token: str, delivery: Delivery, now: float) -> bool:
        retry_at = "" if delivery.next_attempt_at is None else delivery.next_attempt_at
        return bool(self._scripts["settle"](
            keys=(self.keys.hooks(job_id), self.keys.hooks_due()),
            args=(job_id, token, delivery.event, delivery.dump(), retry_at, now, *EVENTS)))

    def secret(self, tenant: str) -> str:
        return tenant_secret(self.client, self.keys, tenant)

    def beat(self, consumer: str, ttl_s: int = WORKER_BEAT_TTL_S) -> None:
        """Say that this webhook worker is reading the transition log."""
        self.client.set(self.keys.webhook_worker(consumer), "1", ex=ttl_s)

    def state(self, job_id: str) -> dict[str, str]:
        state: dict[str, str] = self.client.hgetall(self.keys.hooks(job_id))  # type: ignore[assignment]
        return state


def registration(  # noqa: PLR0917 (the script's whole contract)
    keys: Keys, hooks: WebhookSettings, retention_s: float, owner_id: str, tenant: str,
    url: str, event: str, body: str, now: float,
) -> tuple[tuple[str, str], tuple[Any, ...]]:
    """KEYS and ARGV of ``register.lua`` for ``event`` of ``owner_id`` (a job, or a batch:
    its end, registered by the API), delivered to ``url`` under the tenant's secret."""
    state = Delivery(event=event, webhook_id=webhook_id(owner_id, event), registered_at=now)
    ttl = int(hooks.retry_period_s + retention_s + PICKUP_LEASE_S)
    return ((keys.hooks(owner_id), keys.hooks_due()),
            (owner_id, event, state.dump(), body, url, tenant, now, ttl))


def tenant_secret(client: redis.Redis, keys: Keys, tenant: str) -> str:
    """The tenant's signing secret, made on first use (SET NX: one secret per tenant
    however many processes ask at once)."""
    key = keys.webhook_secret(tenant)
    client.set(key, new_secret(), nx=True)
    return str(client.get(key))
