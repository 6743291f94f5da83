"""Webhooks: signed calls to a job's caller when it starts and when it ends.

What must hold:

- **Signed the Standard Webhooks way.** A delivery carries ``webhook-id`` (the same
  on every retry of one event), ``webhook-timestamp`` (unix seconds of this attempt)
  and ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``
  under the tenant's secret. A tenant's secret (``whsec_`` + base64 of 32 random
  bytes) is made once, with SET NX, and kept in Redis only
  (:meth:`shared.keys.Keys.webhook_secret`): every API and webhook process reads
  the same one, and nothing of it is in the repository or the settings.
- **No SSRF.** A target is checked at submit and again at every delivery, on the
  addresses its host resolves to then; the delivery connects to an address it
  checked (no second lookup that a rebinding DNS could answer otherwise) and does
  not follow redirects. In production only https is allowed, and no address that
  is not globally routable (loopback, private, link-local, shared/CGNAT, multicast,
  reserved...) unless the allow-list (``CHATQ_WEBHOOKS__ALLOW_HOSTS``) names the
  host or a network holding the address. An IPv6 address that carries an IPv4
  one (IPv4-mapped and -translated, NAT64 ``64:ff9b::/96``, 6to4, Teredo) is
  refused when the IPv4 one is; the deprecated IPv4-compatible ``::/96`` and the
  local NAT64 ``64:ff9b:1::/48`` always (:func:`refused_address`). Development
  allows http and any address, but only while it is one trusted user: once API
  keys are set (tenants), it refuses the same addresses as production unless
  ``CHATQ_WEBHOOKS__ALLOW_PRIVATE_TARGETS`` says otherwise.
- **In order, at least once, never in the job hash.** A job's delivery state is a
  hash of its own (:meth:`shared.keys.Keys.hooks`). The scripts of
  ``shared/lua/hooks/`` register each (job, event) once however often its
  transition is read, and keep at most one delivery of a job in flight, earliest
  event first, so ``start`` reaches the receiver before ``completed``. A delivery
  whose worker died is claimed and sent again when its claim lapses; receivers
  deduplicate by ``webhook-id``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from shared.errors import UnsafeWebhook
from shared.keys import Keys
from shared.lifecycle import JobRecord
from shared.schemas import WebhookDelivery, WebhookEvent, utc
from shared.settings import Environment, Settings, WebhookSettings

SECRET_PREFIX = "whsec_"
EVENTS = tuple(e.value for e in WebhookEvent)  # the order a job raises them in
PICKUP_LEASE_S = 60.0  # a claimed delivery not begun by then is claimed and sent again
WORKER_BEAT_TTL_S = 15  # a webhook worker that stopped reading is gone after this
LUA_DIR = Path(__file__).with_name("lua") / "hooks"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- signing ------------------------------------------------------------------------


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of one attempt (Standard Webhooks, v1)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_id(job_id: str, event: str) -> str:
    """The ``webhook-id`` of a job's event: stable, so a receiver can deduplicate."""
    return f"msg_{job_id}_{event}"


# --- targets ------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetPolicy:
    """Where webhooks may go."""

    https_only: bool
    any_address: bool  # development: loopback and private addresses too
    hosts: frozenset[str] = frozenset()  # allowed by name
    networks: tuple[IPNetwork, ...] = ()  # allowed by address

    @classmethod
    def from_settings(cls, settings: Settings) -> TargetPolicy:
        production = settings.env is not Environment.development
        tenants = settings.api.keys is not None or settings.api.keys_file is not None
        return cls.of(settings.webhooks, production, tenants=tenants)

    @classmethod
    def of(cls, hooks: WebhookSettings, production: bool, tenants: bool = False) -> TargetPolicy:
        """``tenants``: API keys are set, so a development stack serves more than its
        own user, and private addresses need ``allow_private_targets``."""
        hosts, networks = set(), []
        for entry in hooks.allow_hosts:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry)
        any_address = not production and (not tenants or hooks.allow_private_targets)
        return cls(https_only=production, any_address=any_address,
                   hosts=frozenset(hosts), networks=tuple(networks))


# IPv6 ranges never reached: IPv4-compatible addresses (deprecated; ``::`` and ``::1``
# are not global anyway) and the local-use NAT64 prefix, whose IPv4 part is not at a
# fixed place (RFC 6052). Python counts the first as global.
_NEVER = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# IPv6 ranges whose last 32 bits are an IPv4 address a gateway reaches: the well-known
# NAT64 prefix (RFC 6052, which Python counts as global) and IPv4-translated (SIIT).
_LAST_32_BITS = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::ffff:0:0:0/96"))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, where a translator or tunnel would take a
    connection to it: IPv4-mapped, NAT64, IPv4-translated, 6to4, Teredo's client."""
    if any(address in net for net in _LAST_32_BITS):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour or (
        address.teredo[1] if address.teredo else None)


def refused_address(address: IPAddress) -> bool:
    """Not globally routable: loopback, private, link-local, shared, multicast, reserved...
    or an IPv6 form of such an IPv4 address (NAT64 ``64:ff9b::7f00:1`` is 127.0.0.1)."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in net for net in _NEVER):
            return True
        embedded = embedded_ipv4(address)
        if embedded is not None and refused_address(embedded):
            return True
    return address.is_multicast or not address.is_global


def target(url: str, policy: TargetPolicy) -> tuple[str, int]:
    """The host and port a webhook URL names, once its scheme is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeWebhook("must be an http(s) URL with a host")
    if parts.scheme != "https" and policy.https_only:
        raise UnsafeWebhook("must be an https:// URL in production")
    host = parts.hostname.lower().rstrip(".")
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def check_addresses(host: str, addresses: list[IPAddress], policy: TargetPolicy) -> None:
    """Refuse a host any of whose addresses chatq must not reach (one is enough: a
    DNS answer mixing public and private addresses is an attack, not an accident)."""
    if policy.any_address or host in policy.hosts:
        return
    if not addresses:
        raise UnsafeWebhook(f"{host} resolves to no address")
    for address in addresses:
        if refused_address(address) and not any(address in n for n in policy.networks):
            raise UnsafeWebhook(
                f"{host} resolves to {address}, a loopback, private, link-local or "
                "otherwise non-public address; an operator may allow it with "
                "CHATQ_WEBHOOKS__ALLOW_HOSTS")


def addresses_of(infos: list[Any]) -> list[IPAddress]:
    """The distinct addresses of a ``getaddrinfo`` answer, in its order."""
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in out:
            out.append(address)
    return out


def resolve(host: str, port: int) -> list[IPAddress]:
    """The host's addresses (an IP literal is itself). Raises OSError when it does not resolve."""
    return addresses_of(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))


# --- delivery state -----------------------------------------------------------------


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
    return [Delivery.load(state[f"ev:{e}"]).view() for e in EVENTS if f"ev:{e}" in state]


# --- the store (the webhook worker's side) ---------------------------------------------


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
        state = Delivery(event=event, webhook_id=webhook_id(record.id, event),
                         registered_at=now)
        ttl = int(self.hooks.retry_period_s + self.retention_s + PICKUP_LEASE_S)
        return bool(self._scripts["register"](
            keys=(self.keys.hooks(record.id), self.keys.hooks_due()),
            args=(record.id, event, state.dump(), body, record.webhook, record.tenant, now,
                  ttl)))

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


def tenant_secret(client: redis.Redis, keys: Keys, tenant: str) -> str:
    """The tenant's signing secret, made on first use (SET NX: one secret per tenant
    however many processes ask at once)."""
    key = keys.webhook_secret(tenant)
    client.set(key, new_secret(), nx=True)
    return str(client.get(key))
