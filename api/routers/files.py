"""``/v1/files`` in OpenAI's wire format: upload (multipart, ``purpose=batch``), list,
read, content, delete. Files are the tenant's own (:mod:`api.files`); errors take
OpenAI's shape. The upload is streamed into GridFS (:mod:`api.multipart`), counted on
the way against ``CHATQ_BATCHES__MAX_FILE_BYTES`` and ``MAX_LINES``."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api import multipart
from api import openai_wire as wire
from api.deps import ServicesDep, TenantDep
from api.files import PURPOSES, PURPOSES_IN, Counted, FileStore, file_object
from shared.errors import BodyTooLarge, InvalidRequest, OverLimit
from shared.settings import BatchSettings

router = APIRouter(prefix="/v1/files", tags=["batch"])

FIELD_MAX = 1024  # a form field's value (purpose, expires_after[...])
EXPIRES_MIN_S, EXPIRES_MAX_S = 3600, 30 * 86400  # OpenAI's bounds of expires_after.seconds
FORM_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")


class _Upload:
    """One upload as it is read: the form fields, and the file written to GridFS."""

    def __init__(self, store: FileStore, tenant: str, limits: BatchSettings) -> None:
        self.store, self.tenant, self.limits = store, tenant, limits
        self.fields: dict[str, str] = {}
        self.counted = Counted()
        self.stream: Any = None
        self.part: multipart.Start | None = None

    async def take(self, event: multipart.Event) -> None:
        if isinstance(event, multipart.Start):
            await self._start(event)
        elif isinstance(event, multipart.Data):
            await self._data(event.data)
        elif self.part is not None and self.part.name == "file":
            await self.stream.close()

    async def _start(self, part: multipart.Start) -> None:
        if part.name == "file":
            if self.stream is not None:
                raise InvalidRequest.of_field("file", "give one file per upload")
            self.stream = self.store.writer(self.tenant, part.filename or "upload.jsonl",
                                            "batch")
        elif part.name not in FORM_FIELDS:
            raise InvalidRequest.of_field(part.name, "unrecognized request argument: "
                                                     "chatq does not support it")
        self.part = part

    async def _data(self, data: bytes) -> None:
        assert self.part is not None
        if self.part.name != "file":
            value = self.fields.get(self.part.name, "") + data.decode("utf-8", "replace")
            if len(value) > FIELD_MAX:
                raise InvalidRequest.of_field(self.part.name, "too long")
            self.fields[self.part.name] = value
            return
        self.counted.add(data)
        if self.counted.size > self.limits.max_file_bytes:
            raise _too_large(self.limits.max_file_bytes)
        await self.stream.write(data)

    async def abort(self) -> None:
        if self.stream is not None:
            await self.stream.abort()


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"the file is over {limit} bytes (CHATQ_BATCHES__MAX_FILE_BYTES)",
                        details=[{"field": "file", "message": f"at most {limit} bytes",
                                  "type": BodyTooLarge.code}])


def _check_fields(fields: dict[str, str], now: float, keep_s: int) -> float:
    """The form's fields checked; the file's expiry time (``keep_s`` from now unless
    ``expires_after`` says)."""
    purpose = fields.get("purpose")
    if purpose is None:
        raise InvalidRequest.of_field("purpose", "required")
    if purpose not in PURPOSES_IN:
        raise InvalidRequest.of_field(
            "purpose", f"{purpose!r} is not supported: chatq takes files for the Batch API "
                       "only (purpose `batch`)")
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return now + keep_s
    if anchor != "created_at":
        raise InvalidRequest.of_field("expires_after.anchor", "must be `created_at`")
    if seconds is None or not seconds.isdigit() or not (
            EXPIRES_MIN_S <= int(seconds) <= EXPIRES_MAX_S):
        raise InvalidRequest.of_field("expires_after.seconds",
                                      f"an integer from {EXPIRES_MIN_S} to {EXPIRES_MAX_S}")
    return now + int(seconds)


def _check_file(upload: _Upload, limits: BatchSettings) -> None:
    if upload.stream is None:
        raise InvalidRequest.of_field("file", "required: the file to upload")
    if upload.counted.size == 0:
        raise InvalidRequest.of_field("file", "the file is empty")
    if upload.counted.total_lines > limits.max_lines:
        raise OverLimit(f"invalid request: file: over {limits.max_lines} lines "
                        "(CHATQ_BATCHES__MAX_LINES)",
                        details=[{"field": "file", "message": f"at most {limits.max_lines} "
                                  "lines", "type": OverLimit.code}])


async def _read_upload(request: Request, upload: _Upload) -> None:
    reader = multipart.Reader(multipart.boundary_of(request.headers.get("content-type")))
    async for chunk in request.stream():
        for event in reader.feed(chunk):
            await upload.take(event)
    reader.close()


@router.post("", summary="Upload a file (OpenAI Files API, purpose `batch`)")
async def create_file(request: Request, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    limits = svc.settings.batches
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_file_bytes + 64 * 1024:
        raise _too_large(limits.max_file_bytes)
    upload = _Upload(svc.files, tenant, limits)
    now = time.time()
    try:
        await _read_upload(request, upload)
        expires_at = _check_fields(upload.fields, now, limits.file_expires_after_s)
        _check_file(upload, limits)
    except multipart.MultipartError as exc:
        await upload.abort()
        raise InvalidRequest.of_field("body", str(exc)) from exc
    except BaseException:
        await upload.abort()
        raise
    file_id = upload.stream._id
    await svc.files.meta.update_one({"_id": file_id},
                                    {"$set": {"metadata.expires_at": expires_at}})
    return JSONResponse(file_object(await svc.files.get(tenant, file_id)))


@router.get("", summary="List the caller's files")
async def list_files(  # noqa: PLR0917 (OpenAI's query parameters)
    svc: ServicesDep, tenant: TenantDep,
    purpose: Annotated[str | None, Query()] = None,
    after: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> JSONResponse:
    if purpose is not None and purpose not in PURPOSES:
        raise InvalidRequest.of_field("purpose", f"one of {', '.join(PURPOSES)}")
    docs, more = await svc.files.list(tenant, purpose=purpose, after=after, limit=limit,
                                      order=order)
    return JSONResponse(wire.page([file_object(d) for d in docs], more))


@router.get("/{file_id}", summary="A file's object")
async def get_file(file_id: str, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    return JSONResponse(file_object(await svc.files.get(tenant, file_id)))


@router.get("/{file_id}/content", summary="A file's content")
async def file_content(file_id: str, svc: ServicesDep, tenant: TenantDep
                       ) -> StreamingResponse:
    await svc.files.get(tenant, file_id)  # 404 before the response starts
    return StreamingResponse(svc.files.chunks(tenant, file_id),
                             media_type="application/octet-stream")


@router.delete("/{file_id}", summary="Delete a file")
async def delete_file(file_id: str, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    await svc.files.delete(tenant, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})

