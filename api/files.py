"""Files of OpenAI's Files API (``/v1/files``), in MongoDB GridFS (PyMongo's async
``AsyncGridFSBucket``, bucket ``files``).

What must hold:

- **Per tenant.** A file's GridFS metadata names its tenant; every read, listing
  and delete filters on it, so another tenant's file is ``404``, never ``403``.
- **Never whole in memory.** An upload is written to GridFS as it arrives and
  counted on the way (bytes, lines); content is read back chunk by chunk.
- **Expiry.** A file past its ``expires_at`` (a batch's output and error files
  after ``output_expires_after``; an upload with ``expires_after``) answers ``404``
  at once and is deleted by the batch feeder's cleanup (:meth:`FileStore.purge`).
- A file is an OpenAI ``file`` object (:func:`file_object`), ids ``file-...``.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from shared.errors import NotFound, Unavailable

BUCKET = "files"
CHUNK_BYTES = 255 * 1024  # GridFS's default chunk size
PURPOSES_IN = ("batch",)  # what POST /v1/files takes
PURPOSES = ("batch", "batch_output")  # what chatq holds


def new_file_id() -> str:
    return "file-" + secrets.token_urlsafe(18)


@dataclass
class Counted:
    """What an upload measured while it was written."""

    size: int = 0
    lines: int = 0
    ends_in_newline: bool = True

    def add(self, data: bytes) -> None:
        if data:
            self.size += len(data)
            self.lines += data.count(b"\n")
            self.ends_in_newline = data.endswith(b"\n")

    @property
    def total_lines(self) -> int:
        """Lines, the last one counted even without a newline at its end."""
        return self.lines + (0 if self.ends_in_newline else 1)


def file_object(doc: dict[str, Any]) -> dict[str, Any]:
    """The GridFS file document as OpenAI's ``file`` object."""
    meta = doc.get("metadata") or {}
    return {"id": doc["_id"], "object": "file", "bytes": doc.get("length", 0),
            "created_at": int(meta.get("created_at") or 0), "filename": doc.get("filename"),
            "purpose": meta.get("purpose"), "status": "processed",
            "expires_at": int(meta["expires_at"]) if meta.get("expires_at") else None,
            "status_details": None}


class FileStore:
    """A tenant's files in GridFS (see the module's docstring)."""

    def __init__(self, mongo: AsyncMongoClient[Any], db: str,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.db = mongo[db]
        self.bucket = AsyncGridFSBucket(self.db, bucket_name=BUCKET,
                                        chunk_size_bytes=chunk_bytes)
        self.meta = self.db[f"{BUCKET}.files"]

    async def ensure_indexes(self) -> None:
        await self.meta.create_index([("metadata.tenant", 1), ("uploadDate", 1)])

    def writer(self, tenant: str, filename: str, purpose: str,
               expires_at: float | None = None, file_id: str | None = None) -> Any:
        """A GridFS upload stream (write, then close or abort)."""
        meta = {"tenant": tenant, "purpose": purpose, "created_at": time.time(),
                "expires_at": expires_at}
        return self.bucket.open_upload_stream_with_id(file_id or new_file_id(), filename,
                                                      metadata=meta)

    async def put(self, tenant: str, file_id: str, filename: str, *, purpose: str,
                  chunks: AsyncIterator[bytes], expires_at: float | None) -> int:
        """Write a file under ``file_id`` as ``chunks`` come, replacing any earlier one of
        that id (a batch's output, written again when finalizing resumes); its size. An
        empty one is not kept (0)."""
        with contextlib.suppress(NoFile):
            await self.bucket.delete(file_id)
        stream = self.writer(tenant, filename, purpose, expires_at, file_id)
        size = 0
        try:
            async for chunk in chunks:
                await stream.write(chunk)
                size += len(chunk)
        except BaseException:
            await stream.abort()
            raise
        if size:
            await stream.close()
        else:
            await stream.abort()
        return size

    async def get(self, tenant: str, file_id: str) -> dict[str, Any]:
        """The file's document; 404 when it is not this tenant's, or has expired."""
        try:
            doc = await self.meta.find_one({"_id": file_id, "metadata.tenant": tenant})
        except PyMongoError as exc:
            raise Unavailable("MongoDB is unreachable; try again shortly") from exc
        expires_at = (doc or {}).get("metadata", {}).get("expires_at")
        if doc is None or (expires_at and expires_at <= time.time()):
            raise NotFound(f"no such file: {file_id}", details={"file_id": file_id})
        return doc

    async def list(self, tenant: str, *, purpose: str | None, after: str | None,
                   limit: int, order: str) -> tuple[list[dict[str, Any]], bool]:
        """A page of the tenant's files (oldest or newest first) and whether more follow."""
        query: dict[str, Any] = {"metadata.tenant": tenant,
                                 "$or": [{"metadata.expires_at": None},
                                         {"metadata.expires_at": {"$gt": time.time()}}]}
        if purpose is not None:
            query["metadata.purpose"] = purpose
        direction = 1 if order == "asc" else -1
        if after is not None:
            mark = await self.get(tenant, after)
            op = "$gt" if direction == 1 else "$lt"
            query["metadata.created_at"] = {op: mark["metadata"]["created_at"]}
        docs = await self.meta.find(query).sort(
            [("metadata.created_at", direction)]).limit(limit + 1).to_list()
        return docs[:limit], len(docs) > limit

    async def chunks(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        """The file's content, chunk by chunk."""
        await self.get(tenant, file_id)
        stream = await self.bucket.open_download_stream(file_id)
        while chunk := await stream.readchunk():
            yield chunk

    async def read(self, tenant: str, file_id: str) -> bytes:
        return b"".join([c async for c in self.chunks(tenant, file_id)])

    async def lines(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines (without their newline; a last line without one too), read
        chunk by chunk."""
        rest = b""
        async for chunk in self.chunks(tenant, file_id):
            *whole, rest = (rest + chunk).split(b"\n")
            for line in whole:
                yield line
        if rest:
            yield rest

    async def delete(self, tenant: str, file_id: str) -> None:
        await self.get(tenant, file_id)
        try:
            await self.bucket.delete(file_id)
        except NoFile as exc:  # deleted by another request meanwhile
            raise NotFound(f"no such file: {file_id}") from exc

    async def purge(self, now: float) -> int:
        """Delete files past their ``expires_at``; how many."""
        gone = await self.meta.find({"metadata.expires_at": {"$ne": None, "$lte": now}},
                                    {"_id": 1}).to_list()
        for doc in gone:
            with contextlib.suppress(NoFile):
                await self.bucket.delete(doc["_id"])
        return len(gone)
