"""API keys and tenant limits kept in MongoDB, managed without a restart.

Beside the keys of ``CHATQ_API__KEYS`` (which keep working), operators create keys with the
admin API (``/v1/admin/keys``) or the CLI (``python -m ops.keys``). What must hold:

- **Never in clear**: a key is shown once, when it is made; the collection holds its
  SHA-256 digest (the document's ``_id``), its tenant, name, first characters (to tell
  keys apart in a listing), created, last-used and expiry times, and ``revoked_at``.
- **Revocation within seconds**: each API process remembers a lookup for
  ``CACHE_S`` at most (:class:`KeyCache`), so a revoked or expired key stops working on
  every process by then, with no restart.
- **Limits without a restart**: ``tenants`` documents hold a tenant's rate limits
  (``api.ratelimits``), which override ``CHATQ_API__RATE_LIMITS`` for that tenant.
- **A key's default webhook**: a stored key may name a webhook URL (checked as a job's
  ``webhook`` is, when it is set) that a batch, or a job of ``/v1/jobs`` or
  ``/invocations``, made with that key and naming none gets. Only the URL is stored:
  deliveries are signed with the tenant's secret, which stays in Redis
  (:mod:`shared.webhooks`). A change reaches every API process within ``CACHE_S``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from shared.errors import Unavailable
from shared.settings import RateLimits

KEY_PREFIX = "sk-chatq-"
CACHE_S = 5.0  # how long an API process trusts a lookup (revocation reaches it by then)
LAST_USED_EVERY_S = 60.0  # last_used_at is written at most this often per key


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class StoredKey:
    id: str  # the key's digest
    tenant: str
    name: str
    hint: str  # its first characters
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    webhook: str | None = None  # the key's default webhook

    @classmethod
    def of(cls, doc: dict[str, Any]) -> StoredKey:
        return cls(id=doc["_id"], tenant=doc["tenant"], name=doc.get("name", ""),
                   hint=doc.get("hint", ""), created_at=doc["created_at"],
                   last_used_at=doc.get("last_used_at"), expires_at=doc.get("expires_at"),
                   revoked_at=doc.get("revoked_at"), webhook=doc.get("webhook"))

    def usable(self, now: datetime) -> bool:
        expires = self.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return self.revoked_at is None and (expires is None or expires > now)

    def view(self) -> dict[str, Any]:
        """As the admin API lists it: never the key."""
        def ts(value: datetime | None) -> int | None:
            if value is None:
                return None
            return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())

        return {"id": self.id[:16], "object": "api_key", "tenant": self.tenant,
                "name": self.name, "hint": self.hint, "created_at": ts(self.created_at),
                "last_used_at": ts(self.last_used_at), "expires_at": ts(self.expires_at),
                "revoked_at": ts(self.revoked_at), "webhook": self.webhook}


class KeyStore:
    def __init__(self, client: AsyncMongoClient[Any], db: str) -> None:
        self.keys = client[db]["api_keys"]
        self.tenants = client[db]["tenants"]

    async def create(self, tenant: str, name: str = "",
                     expires_at: datetime | None = None) -> tuple[str, StoredKey]:
        """A new key for ``tenant``: the key itself (shown once) and what is stored."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        doc = {"_id": digest(key), "tenant": tenant, "name": name,
               "hint": key[:len(KEY_PREFIX) + 4], "created_at": datetime.now(UTC),
               "expires_at": expires_at, "revoked_at": None, "last_used_at": None}
        await self._run(self.keys.insert_one(doc))
        return key, StoredKey.of(doc)

    async def find(self, key: str) -> StoredKey | None:
        doc = await self._run(self.keys.find_one({"_id": digest(key)}))
        return StoredKey.of(doc) if doc else None

    async def list(self, tenant: str | None = None) -> list[StoredKey]:
        query = {} if tenant is None else {"tenant": tenant}
        docs = await self._run(self.keys.find(query).sort("created_at", 1).to_list(None))
        return [StoredKey.of(d) for d in docs]

    async def _match(self, key_id: str) -> dict[str, Any] | None:
        """The one key whose id (its digest, or the first 16 characters a listing shows)
        is ``key_id``; None when there is none (or several match)."""
        matches = await self._run(self.keys.find(
            {"_id": {"$regex": f"^{key_id}"}} if len(key_id) < 64 else {"_id": key_id}
        ).to_list(2)) if key_id.isalnum() and len(key_id) >= 8 else []
        return matches[0] if len(matches) == 1 else None

    async def revoke(self, key_id: str) -> StoredKey | None:
        """Revoke the key ``key_id`` names (see :meth:`_match`); None when none."""
        match = await self._match(key_id)
        if match is None:
            return None
        now = datetime.now(UTC)
        await self._run(self.keys.update_one({"_id": match["_id"], "revoked_at": None},
                                             {"$set": {"revoked_at": now}}))
        return StoredKey.of({**match, "revoked_at": match["revoked_at"] or now})

    async def set_webhook(self, key_id: str, url: str | None) -> StoredKey | None:
        """The key's default webhook (None: no default), the URL already checked; None
        when ``key_id`` names no key."""
        match = await self._match(key_id)
        if match is None:
            return None
        await self._run(self.keys.update_one({"_id": match["_id"]},
                                             {"$set": {"webhook": url}}))
        return StoredKey.of({**match, "webhook": url})

    async def touch(self, key_id: str) -> None:
        await self._run(self.keys.update_one({"_id": key_id},
                                             {"$set": {"last_used_at": datetime.now(UTC)}}))

    async def set_limits(self, tenant: str, limits: RateLimits) -> None:
        await self._run(self.tenants.update_one(
            {"_id": tenant}, {"$set": {"rate_limits": limits.model_dump(exclude_none=True)}},
            upsert=True))

    async def limits(self, tenant: str) -> RateLimits | None:
        doc = await self._run(self.tenants.find_one({"_id": tenant}))
        if not doc or doc.get("rate_limits") is None:
            return None
        return RateLimits.model_validate(doc["rate_limits"])

    @staticmethod
    async def _run(awaitable: Any) -> Any:
        try:
            return await awaitable
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB is unreachable ({type(exc).__name__})") from exc


class KeyCache:
    """One API process's memory of key and limit lookups, each trusted ``CACHE_S``."""

    def __init__(self, store: KeyStore, ttl_s: float = CACHE_S) -> None:
        self.store, self.ttl_s = store, ttl_s
        self._keys: dict[str, tuple[float, StoredKey | None]] = {}
        self._limits: dict[str, tuple[float, RateLimits | None]] = {}
        self._touched: dict[str, float] = {}

    async def stored(self, key: str) -> StoredKey | None:
        """The stored, usable key; None when there is no such key."""
        now = time.monotonic()
        found = self._keys.get(digest(key))
        if found is None or now - found[0] > self.ttl_s:
            found = (now, await self.store.find(key))
            if len(self._keys) > 10_000:  # unknown keys must not grow it without bound
                self._keys.clear()
            self._keys[digest(key)] = found
        stored = found[1]
        if stored is None or not stored.usable(datetime.now(UTC)):
            return None
        return stored

    async def tenant(self, key: str) -> str | None:
        """The tenant of a stored, usable key; None when there is no such key."""
        now = time.monotonic()
        stored = await self.stored(key)
        if stored is None:
            return None
        if now - self._touched.get(stored.id, -LAST_USED_EVERY_S) >= LAST_USED_EVERY_S:
            self._touched[stored.id] = now
            await self.store.touch(stored.id)
        return stored.tenant

    async def limits(self, tenant: str) -> RateLimits | None:
        """The tenant's stored limits. MongoDB away: the last ones known (none if never
        read), so an outage of the store never stops admission (limits from settings
        still hold)."""
        now = time.monotonic()
        found = self._limits.get(tenant)
        if found is None or now - found[0] > self.ttl_s:
            try:
                found = (now, await self.store.limits(tenant))
            except Unavailable:
                found = (now, found[1] if found is not None else None)
            self._limits[tenant] = found
        return found[1]
