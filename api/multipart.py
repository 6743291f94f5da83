"""A streaming ``multipart/form-data`` reader for ``POST /v1/files`` (the SDK's upload).

Why chatq's own: an upload may be up to ``CHATQ_BATCHES__MAX_FILE_BYTES`` (200 MB), so
it is never held in memory; it goes to GridFS as it arrives. The reader is pure (bytes
in, :class:`Start` / :class:`Data` / :class:`End` events out), so it is tested without
a server. What must hold:

- A part's body is everything between its blank line and the next ``CRLF--boundary``,
  byte for byte, whatever chunk boundaries the bytes came in (a delimiter split across
  two chunks is still found: the last ``len(delimiter)`` bytes are held back).
- Malformed input (no closing delimiter, a part without ``Content-Disposition``
  ``name``, headers over :data:`MAX_HEADER_BYTES`) raises :class:`MultipartError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

MAX_HEADER_BYTES = 16 * 1024  # one part's headers


class MultipartError(ValueError):
    """The body is not well-formed ``multipart/form-data``."""


@dataclass(frozen=True)
class Start:
    """A part begins: its form field name and, for a file, its file name."""

    name: str
    filename: str | None


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class End:
    """The current part ended."""


Event = Start | Data | End


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type (MultipartError if none)."""
    msg = Message()
    msg["content-type"] = content_type or ""
    boundary = msg.get_param("boundary")
    if msg.get_content_type() != "multipart/form-data" or not isinstance(boundary, str):
        raise MultipartError("the body must be multipart/form-data with a boundary")
    return boundary.encode("latin-1")


class Reader:
    """Feed it the body's bytes as they come (:meth:`feed`), then :meth:`close`."""

    def __init__(self, boundary: bytes) -> None:
        self.delimiter = b"\r\n--" + boundary
        # The first delimiter has no CRLF before it: one is put there, so every
        # delimiter is found the same way.
        self.buf = b"\r\n"
        self.state = "preamble"  # preamble | delimited | headers | body | done

    def feed(self, chunk: bytes) -> list[Event]:
        self.buf += chunk
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self.state != "done":
            raise MultipartError("the multipart body ended before its closing boundary")

    def _step(self, events: list[Event]) -> bool:
        """One move of the state machine; False when it needs more bytes."""
        if self.state == "preamble":
            return self._preamble()
        if self.state == "delimited":
            return self._delimited()
        if self.state == "headers":
            return self._headers(events)
        if self.state == "body":
            return self._body(events)
        self.buf = b""  # the epilogue is ignored
        return False

    def _preamble(self) -> bool:
        at = self.buf.find(self.delimiter)
        if at < 0:
            self.buf = self.buf[-(len(self.delimiter) - 1):]
            return False
        self.buf, self.state = self.buf[at:], "delimited"
        return True

    def _delimited(self) -> bool:
        """At a delimiter: ``--`` follows the last one, CRLF one before a part."""
        end = len(self.delimiter)
        if len(self.buf) < end + 2:
            return False
        tail = self.buf[end:end + 2]
        if tail == b"--":
            self.state, self.buf = "done", b""
            return False
        if tail != b"\r\n":
            raise MultipartError("a multipart boundary is not followed by CRLF")
        self.state, self.buf = "headers", self.buf[end + 2:]
        return True

    def _headers(self, events: list[Event]) -> bool:
        at = self.buf.find(b"\r\n\r\n")
        if at < 0:
            if len(self.buf) > MAX_HEADER_BYTES:
                raise MultipartError("a part's headers are too long")
            return False
        raw, self.buf = self.buf[:at].decode("utf-8", "replace"), self.buf[at + 4:]
        msg = Message()
        for line in raw.split("\r\n"):
            key, _, value = line.partition(":")
            msg[key.strip()] = value.strip()
        name = msg.get_param("name", header="content-disposition")
        if msg.get_content_disposition() != "form-data" or not isinstance(name, str):
            raise MultipartError("a part has no Content-Disposition: form-data name")
        filename = msg.get_param("filename", header="content-disposition")
        events.append(Start(name, filename if isinstance(filename, str) else None))
        self.state = "body"
        return True

    def _body(self, events: list[Event]) -> bool:
        at = self.buf.find(self.delimiter)
        if at < 0:
            keep = len(self.delimiter) - 1
            if len(self.buf) > keep:
                events.append(Data(self.buf[:-keep]))
                self.buf = self.buf[-keep:]
            return False
        if at:
            events.append(Data(self.buf[:at]))
        events.append(End())
        self.buf, self.state = self.buf[at:], "delimited"
        return True
