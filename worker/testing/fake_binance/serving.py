"""The HTTP plumbing of the fake Binance: a stdlib ThreadingHTTPServer in a thread."""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self


@dataclass
class Reply:
    status: int | None  # None: close the connection without answering
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    hang: threading.Event | None = None  # hold the answer until set, then drop it


class Serving(abc.ABC):
    """Start, stop, ``base_url`` and the hung requests; subclasses implement ``handle``."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._hung: list[threading.Event] = []
        self._hung_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @abc.abstractmethod
    def handle(self, method: str, target: str, body: str, headers: Mapping[str, str]) -> Reply:
        """The answer to one request (FakeBinance: routes, auth, faults)."""

    def __repr__(self) -> str:
        where = self.base_url if self._server is not None else "not started"
        return f"{type(self).__name__}({where})"

    def start(self) -> Self:
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-binance",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_hung()  # hung requests end by dropping their connections
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: give it to the client as its base URL."""
        if self._server is None:
            raise RuntimeError("FakeBinance is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def hang_reply(self) -> Reply:
        event = threading.Event()
        with self._hung_lock:
            self._hung.append(event)
        return Reply(None, hang=event)

    def release_hung(self) -> None:
        """Let requests held by a HANG fault end (their connections are dropped)."""
        with self._hung_lock:
            hung, self._hung = self._hung, []
        for event in hung:
            event.set()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: Serving


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.fake.handle(method, self.path, body, headers)
        self.close_connection = True
        if reply.status is None:
            return  # dropped: the client sees the connection close with no answer
        data = b"" if reply.body is None else _encode(reply.body)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        kind = "text/html" if isinstance(reply.body, bytes) else "application/json;charset=UTF-8"
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: tests assert on :attr:`FakeBinance.requests` instead."""


def _encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body, default=str).encode()
