"""Signing webhooks the Standard Webhooks way (see :mod:`shared.webhooks`): a stable
``webhook-id`` per event, and ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``
under the tenant's ``whsec_`` secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"


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
