"""A tiny scripted OpenAI-compatible HTTP server for the upstream engine's unit tests:
each request takes the next scripted answer (a stream of chunks, an error status, a
stall, a dropped connection) and is recorded (path, query, headers, body), and the
server notes when a client went away in the middle of a stream."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


def chunk(text: str | None = None, finish: str | None = None,
          usage: dict[str, int] | None = None, logprobs: Any = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (no choice at all when only ``usage`` is given)."""
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                            "created": 0, "model": "up"}
    if text is not None or finish is not None:
        delta = {"content": text} if text is not None else {}
        body["choices"] = [{"index": 0, "delta": delta, "logprobs": logprobs,
                            "finish_reason": finish}]
    else:
        body["choices"] = []
    if usage is not None:
        body["usage"] = usage
    return body


@dataclass
class Stream:
    """A 200 with these chunks as server-sent events, ``delay_s`` apart."""

    chunks: list[dict[str, Any]]
    delay_s: float = 0.0
    done: bool = True  # end with data: [DONE]


@dataclass
class Status:
    """An error answer."""

    code: int
    body: dict[str, Any] | str = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    """Say nothing for this long, then close."""

    seconds: float


Answer = Stream | Status | Stall


def words(*texts: str, finish: str = "stop") -> list[dict[str, Any]]:
    return [chunk(t) for t in texts] + [chunk(finish=finish)]


@dataclass
class Seen:
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeUpstream:
    def __init__(self, answers: list[Answer] | None = None) -> None:
        self.answers: list[Answer] = list(answers or [])
        self.seen: list[Seen] = []
        self.client_gone = threading.Event()  # a client left in the middle of a stream
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.fake = self
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeUpstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next(self) -> Answer:
        with self._lock:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def begin(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeUpstream


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *_: Any) -> None:
        pass

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("content-length") or 0)
        parts = urlsplit(self.path)
        fake.begin(Seen(parts.path, parts.query,
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(self.rfile.read(length) or b"{}")))
        self._ended = False
        try:
            answer = fake._next()
            if isinstance(answer, Stall):
                time.sleep(answer.seconds)
            elif isinstance(answer, Status):
                self._status(answer)
            else:
                self._stream(answer)
        finally:
            self._end()

    def _end(self) -> None:
        """The answer is over for the client (counted before its last bytes go out)."""
        if not self._ended:
            self._ended = True
            self.server.fake.end()

    def _status(self, answer: Status) -> None:
        raw = (answer.body if isinstance(answer.body, str) else json.dumps(answer.body)).encode()
        self.send_response(answer.code)
        for k, v in answer.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _stream(self, answer: Stream) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [f"data: {json.dumps(c)}\n\n".encode() for c in answer.chunks]
        events += [b"data: [DONE]\n\n"] if answer.done else []
        try:
            for i, event in enumerate(events):
                time.sleep(answer.delay_s if i else 0)
                if i == len(events) - 1:
                    self._end()
                self.wfile.write(event)
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.fake.client_gone.set()
