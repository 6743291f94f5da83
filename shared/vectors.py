"""How an embedding job's vectors travel in its job record (``result``).

``{"embeddings": [str, ...]}``: each vector as the base64 of its little-endian
float32 values, in the order of the job's ``inputs``. That is OpenAI's own
``encoding_format: "base64"``, so the API passes it through as it is, and
decodes it for ``"float"``; and it is about a quarter of the size of JSON
numbers in the record (llama.cpp's embeddings are float32: nothing is lost).
"""

from __future__ import annotations

import base64
import struct

RESULT_KEY = "embeddings"


def pack(vector: list[float]) -> str:
    """A vector as base64 of little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def unpack(text: str) -> list[float]:
    """The float values of :func:`pack`'s text."""
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))
