"""The key store against a real MongoDB-compatible store: a key's default webhook, set by
the id a listing shows, seen by the API's key cache once its lookup is renewed, cleared."""

from __future__ import annotations

import asyncio
import uuid

from pymongo import AsyncMongoClient

from shared.keystore import KeyCache, KeyStore, StoredKey


def webhook(stored: StoredKey | None) -> str | None:
    assert stored is not None
    return stored.webhook


def test_a_keys_default_webhook_is_set_seen_and_cleared(mongo_url: str) -> None:
    async def main() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
        store = KeyStore(client, f"keys_{uuid.uuid4().hex[:8]}")
        cache = KeyCache(store, ttl_s=0)  # every lookup read again
        try:
            key, made = await store.create("alpha", "ci")
            assert made.webhook is None and made.view()["webhook"] is None
            assert webhook(await cache.stored(key)) is None
            listed_id = made.view()["id"]  # the first 16 characters of the digest
            url = "https://example.com/hooks/chatq"
            stored = await store.set_webhook(listed_id, url)
            assert stored is not None and stored.view()["webhook"] == url
            assert webhook(await store.find(key)) == url
            assert webhook(await cache.stored(key)) == url
            assert await cache.tenant(key) == "alpha"
            assert webhook(await store.set_webhook(listed_id, None)) is None
            assert webhook(await cache.stored(key)) is None
            assert await store.set_webhook("0123456789abcdef", url) is None  # no such key
            assert await store.set_webhook("not-an-id!", url) is None
            await store.revoke(listed_id)
            assert await cache.stored(key) is None  # a revoked key has no defaults
        finally:
            await client.close()

    asyncio.run(main())
