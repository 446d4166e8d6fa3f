"""A small scriptable HTTP/1.1 server on a loopback address, for tests (stdlib only).

    with TestServer() as server:                        # 127.0.0.1, free port
        server.route("/ok.json", Reply.json({"a": 1}))
        server.route("/flaky", [Reply(503), Reply(503), Reply.text("fine")])  # one per request,
        server.route("/echo", lambda req: Reply.json(req.params))             # the last repeats
        url = server.url("/ok.json")
        ...
        assert server.hits("/flaky") == 3
        assert server.requests_for("/flaky")[0].headers["user-agent"].startswith("moepipe")

Unrouted paths answer 404. Each `Reply` can also misbehave on purpose: wait before answering
(`delay_s`), trickle the body (`chunk_size`, `chunk_delay_s`), announce a different
Content-Length than it sends (`declared_length`, then closes: a truncated body), send no length
and end the body by closing (`close_delimited`), or reset the TCP connection after some body
bytes (`reset_after`).

`connections` counts accepted TCP connections, so a test can prove that a client never
connected at all (e.g. a listener on 127.0.0.2 that a redirect must not reach); `max_in_flight`
is the largest number of requests handled at the same time.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class RecordedRequest:
    """One request as the server saw it; `time` is time.monotonic() when its headers arrived."""

    method: str
    path: str  # without the query
    query: str
    headers: dict[str, str]  # lower-case names
    time: float
    client: tuple[str, int]

    @property
    def params(self) -> dict[str, str]:
        """Query parameters, last value wins."""
        return {key: values[-1] for key, values in parse_qs(self.query, keep_blank_values=True).items()}


@dataclass
class Reply:
    """What to answer to one request, including deliberate misbehaviour."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line: provokes read timeouts
    chunk_size: int | None = None  # send the body in pieces of this many bytes ...
    chunk_delay_s: float = 0.0  # ... sleeping this long before each piece
    declared_length: int | None = None  # announce this Content-Length instead of len(body)
    close_delimited: bool = False  # no Content-Length: the body ends when the connection closes
    reset_after: int | None = None  # send this many body bytes, then reset the connection (RST)

    @classmethod
    def json(cls, value: Any, status: int = 200, **kwargs: Any) -> Reply:
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        return cls(status, json.dumps(value).encode(), headers, **kwargs)

    @classmethod
    def text(cls, value: str, status: int = 200, **kwargs: Any) -> Reply:
        headers = {"Content-Type": "text/plain; charset=utf-8", **kwargs.pop("headers", {})}
        return cls(status, value.encode(), headers, **kwargs)

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, b"", {"Location": location})


Handler = Reply | Sequence[Reply] | Callable[[RecordedRequest], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: TestServer, address: tuple[str, int]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.owner = owner
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner._connected(request)
        super().process_request(request, client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart (delayed ACK)
    timeout = 10  # idle keep-alive connections end on their own
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; the request log is the record

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        owner = self.server.owner
        parts = urlsplit(self.path)
        request = RecordedRequest(self.command, parts.path, parts.query,
                                  {k.lower(): v for k, v in self.headers.items()},
                                  time.monotonic(), self.client_address[:2])
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        owner._enter()
        try:
            self._send(owner._reply_for(request), owner._stopping)
        except OSError:
            self.close_connection = True  # the client went away; nothing to report
        finally:
            owner._leave()

    def _send(self, reply: Reply, stopping: threading.Event) -> None:
        if reply.delay_s and stopping.wait(reply.delay_s):
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        body = reply.body
        abnormal = reply.close_delimited or reply.reset_after is not None or (
            reply.declared_length is not None and reply.declared_length != len(body))
        if not reply.close_delimited:
            length = reply.declared_length if reply.declared_length is not None else len(body)
            self.send_header("Content-Length", str(length))
        if abnormal:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        if reply.reset_after is not None:
            self.wfile.write(body[:reply.reset_after])
            self.wfile.flush()
            time.sleep(0.05)  # let the bytes leave before the reset discards the send queue
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        step = reply.chunk_size or max(len(body), 1)
        for start in range(0, len(body), step):
            if reply.chunk_delay_s and stopping.wait(reply.chunk_delay_s):
                return
            self.wfile.write(body[start:start + step])
            self.wfile.flush()

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass  # the socket was reset on purpose
        self.server.owner._disconnected(self.connection)


class TestServer:
    """Threaded HTTP server on `host` (default 127.0.0.1) and a free port; see module docstring."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, Handler] = {}
        self._cursor: dict[str, int] = {}
        self._requests: list[RecordedRequest] = []
        self._open: set[socket.socket] = set()
        self._in_flight = 0
        self._stopping = threading.Event()
        self.connections = 0
        self.max_in_flight = 0
        self._server = _Server(self, (host, port))
        self.host = host
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> TestServer:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"TestServer:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and free the port; safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()

    def __enter__(self) -> TestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- scripting -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def route(self, path: str, handler: Handler) -> None:
        """Answer requests for `path` (query ignored): a Reply, a sequence of Replies, or a function."""
        with self._lock:
            self._routes[path] = handler
            self._cursor[path] = 0

    # ---- what happened ---------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def hits(self, path: str) -> int:
        return len(self.requests_for(path))

    def clear(self) -> None:
        """Forget recorded requests and counters (routes stay)."""
        with self._lock:
            self._requests.clear()
            self.connections = 0
            self.max_in_flight = 0

    # ---- internals, called from handler threads --------------------------------------------
    def _reply_for(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            handler = self._routes.get(request.path)
            if handler is None:
                return Reply.text("not found", status=404)
            if isinstance(handler, Reply):
                return handler
            if not callable(handler):
                index = min(self._cursor[request.path], len(handler) - 1)
                self._cursor[request.path] += 1
                return handler[index]
        return handler(request)  # outside the lock: a function may block or call back

    def _connected(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._open.add(sock)

    def _disconnected(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
