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

One package, one module per concern: :mod:`~shared.webhooks.signing`,
:mod:`~shared.webhooks.targets` (the SSRF guard), :mod:`~shared.webhooks.deliveries`
(state and retries) and :mod:`~shared.webhooks.store` (Redis). The names below are
what the API (``api/webhooks.py``) and the webhook worker (``workers/webhooks/``) use.
"""

from shared.webhooks.deliveries import (
    BATCH_EVENTS,
    EVENTS,
    Attempt,
    Delivery,
    advance,
    deliveries,
)
from shared.webhooks.signing import SECRET_PREFIX, new_secret, sign, webhook_id
from shared.webhooks.store import (
    LUA_DIR,
    PICKUP_LEASE_S,
    WORKER_BEAT_TTL_S,
    HookStore,
    Pending,
    registration,
    tenant_secret,
)
from shared.webhooks.targets import (
    IPAddress,
    IPNetwork,
    TargetPolicy,
    addresses_of,
    check_addresses,
    check_target,
    embedded_ipv4,
    refused_address,
    resolve,
    target,
)

__all__ = [
    "BATCH_EVENTS",
    "EVENTS",
    "LUA_DIR",
    "PICKUP_LEASE_S",
    "SECRET_PREFIX",
    "WORKER_BEAT_TTL_S",
    "Attempt",
    "Delivery",
    "HookStore",
    "IPAddress",
    "IPNetwork",
    "Pending",
    "TargetPolicy",
    "addresses_of",
    "advance",
    "check_addresses",
    "check_target",
    "deliveries",
    "embedded_ipv4",
    "new_secret",
    "refused_address",
    "registration",
    "resolve",
    "sign",
    "target",
    "tenant_secret",
    "webhook_id",
]
