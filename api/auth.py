"""API keys: ``Authorization: Bearer <key>``; each key belongs to a tenant.

Keys come from ``CHATQ_API__KEYS`` (``key=tenant,key=tenant``) and/or a keys
file (one ``key=tenant`` per line). With neither, development mode runs open:
every request, with any key or none, is tenant ``dev`` (so ``make run`` answers a
bare curl, and an SDK that insists on some key, as llama-server and Ollama take).
Production refuses to start without keys, and refuses the development key.
Keys are held as SHA-256 digests and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac

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

    def tenant(self, authorization: str | None) -> str:
        if self.anonymous_tenant is not None:  # development with no keys: open to all
            return self.anonymous_tenant
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        digest = _digest(key.strip())
        for known, tenant in self._tenants.items():
            if hmac.compare_digest(known, digest):
                return tenant
        raise Unauthorized("invalid API key")
