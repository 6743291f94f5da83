"""API keys: ``Authorization: Bearer <key>``; each key belongs to a tenant.

Keys come from ``CHATQ_API__KEYS`` (``key=tenant,key=tenant``) and/or a keys
file (one ``key=tenant`` per line). With neither, development mode runs open:
every request, with any key or none, is tenant ``dev`` (so ``make run`` answers a
bare curl, and an SDK that insists on some key, as llama-server and Ollama take).
Production refuses to start without keys, and refuses the development key.

Operator keys (``CHATQ_API__ADMIN_KEYS``, no tenant) open the operator views: the
whole ``/v1/queues`` (worker host names and pids, every tenant's running jobs) and
``/metrics`` in production. A tenant's key sees its own jobs there and counts for
the rest. Development with no keys at all stays open to everything.

Keys are held as SHA-256 digests and compared in constant time. Keys made with the admin
API or ``python -m ops.keys`` live in MongoDB (``shared/keystore.py``); ``api.deps`` asks
there for a key these settings do not know.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from shared.errors import ConfigError, Unauthorized
from shared.settings import DEV_API_KEY, Environment, Settings


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _pairs(text: str, source: str) -> list[tuple[str, str]]:
    pairs = []
    for raw in text.replace(",", "\n").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, tenant = line.partition("=")
        if not sep or not key.strip() or not tenant.strip():
            raise ConfigError(f"{source}: expected `key=tenant`, got {line[:4]}...")
        pairs.append((key.strip(), tenant.strip()))
    return pairs


def bearer(authorization: str | None) -> str | None:
    scheme, _, key = (authorization or "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _admin_digests(settings: Settings) -> list[bytes]:
    if settings.api.admin_keys is None:
        return []
    keys = [k.strip() for k in settings.api.admin_keys.get_secret_value().split(",")]
    if settings.env is not Environment.development and DEV_API_KEY in keys:
        raise ConfigError("the development API key is refused as an admin key")
    return [_digest(k) for k in keys if k]


def _matches(digests: list[bytes], key: str) -> bool:
    digest = _digest(key)
    return any(hmac.compare_digest(known, digest) for known in digests)


@dataclass(frozen=True)
class Caller:
    """Who is asking: a tenant's key, or an operator's (``tenant`` None)."""

    tenant: str | None
    admin: bool


class KeyRing:
    def __init__(self, settings: Settings) -> None:
        pairs: list[tuple[str, str]] = []
        if settings.api.keys is not None:
            pairs += _pairs(settings.api.keys.get_secret_value(), "CHATQ_API__KEYS")
        if settings.api.keys_file is not None:
            try:
                text = settings.api.keys_file.read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read keys file: {exc}") from exc
            pairs += _pairs(text, str(settings.api.keys_file))
        self.anonymous_tenant: str | None = None
        if not pairs and settings.env is Environment.development:
            pairs = [(DEV_API_KEY, "dev")]
            self.anonymous_tenant = "dev"
        if settings.env is not Environment.development and any(
                k == DEV_API_KEY for k, _ in pairs):
            raise ConfigError("the development API key is refused outside development")
        self._tenants = {_digest(k): t for k, t in pairs}
        self._admins = _admin_digests(settings)
        if any(d in self._tenants for d in self._admins):
            raise ConfigError("an admin key is also a tenant's key: give operators their own")

    def is_admin(self, authorization: str | None) -> bool:
        """The request carries an operator's key (never true without admin keys, so the
        development mode's openness never reaches what only operators may change)."""
        key = bearer(authorization)
        return key is not None and _matches(self._admins, key)

    def caller(self, authorization: str | None) -> Caller:
        """The caller of an operator view (401 when the key is neither a tenant's nor
        an operator's). Development with no keys at all: everyone is the operator."""
        key = bearer(authorization)
        if key is not None and _matches(self._admins, key):
            return Caller(None, admin=True)
        if self.anonymous_tenant is not None and not self._admins:
            return Caller(self.anonymous_tenant, admin=True)
        return Caller(self.tenant(authorization), admin=False)

    def tenant(self, authorization: str | None) -> str:
        if self.anonymous_tenant is not None:  # development with no keys: open to all
            return self.anonymous_tenant
        key = bearer(authorization)
        if key is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        digest = _digest(key)
        for known, tenant in self._tenants.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthorized("invalid API key")
