"""The GridFS file store against a real MongoDB-compatible store: per tenant, written as
chunks come, and gone (404) once past its expiry, then purged."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient

from api.files import FileStore, file_object
from shared.errors import NotFound


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_files_are_per_tenant_and_expire(mongo_url: str) -> None:
    async def main() -> None:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
        store = FileStore(client, f"files_{uuid.uuid4().hex[:8]}")
        try:
            size = await store.put("alice", "file-a", "a.jsonl", purpose="batch_output",
                                   chunks=_chunks(b"one\n", b"two\n"), expires_at=None)
            assert size == 8
            assert await store.read("alice", "file-a") == b"one\ntwo\n"
            assert file_object(await store.get("alice", "file-a"))["bytes"] == 8
            with pytest.raises(NotFound):
                await store.get("bob", "file-a")
            assert await store.put("alice", "file-e", "e.jsonl", purpose="batch_output",
                                   chunks=_chunks(), expires_at=None) == 0  # not kept
            with pytest.raises(NotFound):
                await store.get("alice", "file-e")
            await store.put("alice", "file-old", "o.jsonl", purpose="batch_output",
                            chunks=_chunks(b"x\n"), expires_at=time.time() - 1)
            with pytest.raises(NotFound):
                await store.get("alice", "file-old")  # past its expiry: at once
            page, more = await store.list("alice", purpose=None, after=None, limit=10,
                                          order="desc")
            assert [d["_id"] for d in page] == ["file-a"] and not more
            assert await store.purge(time.time()) == 1
            assert await store.meta.count_documents({"_id": "file-old"}) == 0
        finally:
            await client.close()

    asyncio.run(main())


def test_a_files_lines_come_whole_across_its_chunks(mongo_url: str) -> None:
    async def main() -> list[bytes]:
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo_url)
        store = FileStore(client, f"files_{uuid.uuid4().hex[:8]}", chunk_bytes=4)
        try:
            await store.put("t", "file-l", "l.jsonl", purpose="batch", expires_at=None,
                            chunks=_chunks(b'{"a":1}\n\n{"bb":22}\r\n{"c":3}'))
            return [line async for line in store.lines("t", "file-l")]
        finally:
            await client.close()

    assert asyncio.run(main()) == [b'{"a":1}', b"", b'{"bb":22}\r', b'{"c":3}']
