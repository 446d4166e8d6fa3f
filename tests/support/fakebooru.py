"""A fake Danbooru on loopback: /posts.json with id-cursor paging, images, and injected faults.

    with FakeBooru(n_posts=30, faults={1003: "retry_after", 1005: "truncated"}) as booru:
        scrape(cfg_pointing_at(booru.url), out)
        assert len(booru.image_requests(1003)) == 2

Post ids run from `first_id` upwards; the API lists them newest (highest id) first, as Danbooru
does. Every request is logged (method, path, query, time), so tests can count fetches per post.
A second listener on 127.0.0.2 accepts and records connections: redirects to it must be refused
by the client before it ever connects.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image, ImageDraw

# What each fault does to the post's image (or listing entry); see FakeBooru._serve_image.
FAULTS = (
    "retry_after",       # 429 with Retry-After the first time, then the image
    "unavailable",       # 503 every time
    "truncated",         # Content-Length larger than the bytes sent, then close
    "html",              # an HTML page served as Content-Type: image/png
    "oversized",         # a body larger than the client's max_bytes, no Content-Length
    "bomb",              # a tiny PNG whose header declares 20000 x 20000 pixels
    "md5_mismatch",      # the API's md5 is not the md5 of the served file
    "redirect_private",  # 302 to http://127.0.0.2:<port>/x.png (must not be followed)
    "redirect_ok",       # 302 to the real file on this server
    "slow",              # the body trickles in far slower than any sane deadline
    "reset",             # half the body, then a TCP reset (SO_LINGER 0)
    "robots",            # the file lives under a path robots.txt disallows
    "noai",              # the image comes with X-Robots-Tag: noai
    "deleted",           # listed without file_url or md5, like deleted/banned posts
    "explicit",          # rating "e": refused by the default rating filter, never fetched
)

DEFAULT_ROBOTS = "User-agent: *\nDisallow: /private/\n"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    time: float
    client: str


@dataclass
class FakePost:
    id: int
    data: bytes              # what a successful download returns
    tags: list[str]
    rating: str
    fault: str | None = None
    api_md5: str | None = None  # what posts.json announces
    path: str | None = None     # where the file is served; None for deleted posts
    served: int = 0             # image requests so far (for one-shot faults)

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()


def render_avatar_png(seed: int, size: int = 64) -> tuple[bytes, list[str]]:
    """A small, unique avatar PNG and its booru tags (the synthetic renderer's when available)."""
    try:
        import numpy as np

        from moepipe.scrape.sources.synthetic.render import render_avatar, sample_spec

        rng = np.random.default_rng(seed)
        spec = sample_spec(rng)
        image, tags = render_avatar(spec, size, rng).convert("RGB"), spec.tags()
    except ImportError:  # the renderer is optional here; its own tests cover it
        rng_ = random.Random(seed)
        colour = lambda: tuple(rng_.randrange(256) for _ in range(3))  # noqa: E731 - a one-line formula, named for the assertions below
        image, tags = Image.new("RGB", (size, size), colour()), ["solo", "chibi", "1girl"]
        draw = ImageDraw.Draw(image)
        draw.ellipse((size * 0.15, size * 0.1, size * 0.85, size * 0.8), fill=colour())  # hair
        draw.ellipse((size * 0.25, size * 0.25, size * 0.75, size * 0.8), fill=(255, 224, 200))  # face
    # Stamp the seed into a corner pixel so that no two posts ever share content (or sha256).
    image.putpixel((0, 0), (seed % 256, seed // 256 % 256, seed // 65536 % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), tags


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header declares width x height."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4, 9)  # a few rows; the rest "follows"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart (delayed ACK)
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        booru = self.server.booru
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        booru._record(Request("GET", parts.path, query, time.monotonic(), self.client_address[0]))
        if parts.path == "/robots.txt":
            if booru.robots is None:
                return self._send(404, b"not found", "text/plain")
            return self._send(200, booru.robots.encode(), "text/plain")
        if parts.path == "/posts.json":
            return self._posts(query)
        post = booru._by_path.get(parts.path)
        if post is None:
            return self._send(404, b"not found", "text/plain")
        return self._image(post)

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _posts(self, query: dict[str, str]) -> None:
        booru = self.server.booru
        if booru.auth is not None and (query.get("login"), query.get("api_key")) != booru.auth:
            body = json.dumps({"success": False, "message": "You are not authorized"}).encode()
            return self._send(401, body, "application/json")
        try:
            limit = max(1, min(200, int(query.get("limit", "20"))))
        except ValueError:
            limit = 20
        wanted = [tag for tag in query.get("tags", "").split() if ":" not in tag]
        posts = [p for p in booru.posts if all(tag in p.tags for tag in wanted)]  # newest first
        page = query.get("page", "1")
        if page.startswith("b") and page[1:].isdigit():
            chosen = [p for p in posts if p.id < int(page[1:])][:limit]
        elif page.startswith("a") and page[1:].isdigit():
            chosen = [p for p in posts if p.id > int(page[1:])][-limit:]
        else:
            number = int(page) if page.isdigit() else 1
            chosen = posts[(number - 1) * limit:number * limit]
        body = json.dumps([booru.api_record(p) for p in chosen]).encode()
        self._send(200, body, "application/json")

    def _image(self, post: FakePost) -> None:
        booru = self.server.booru
        with booru._lock:
            post.served += 1
            attempt = post.served
        fault = post.fault
        if fault == "retry_after" and attempt == 1:
            return self._send(429, b"slow down", "text/plain", {"Retry-After": booru.retry_after})
        if fault == "unavailable":
            return self._send(503, b"try later", "text/plain")
        if fault == "html":
            page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
            return self._send(200, page, "image/png")
        if fault == "redirect_private":
            location = f"http://127.0.0.2:{booru.blocked_port}/x.png"
            return self._send(302, b"", "text/plain", {"Location": location})
        if fault == "redirect_ok":
            return self._send(302, b"", "text/plain", {"Location": f"{booru.url}/moved/{post.md5}.png"})
        if fault == "noai":
            return self._send(200, post.data, "image/png", {"X-Robots-Tag": "noai"})
        if fault in ("truncated", "reset", "slow", "oversized"):
            return self._broken_body(post, fault)
        return self._send(200, post.data, "image/png")

    def _broken_body(self, post: FakePost, fault: str) -> None:
        booru = self.server.booru
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")  # so the client never reuses a broken connection
        if fault != "oversized":  # without a length the body ends at close: only a streaming cap helps
            extra = 1000 if fault == "truncated" else 0
            self.send_header("Content-Length", str(len(post.data) + extra))
        self.end_headers()
        self.close_connection = True
        try:
            if fault == "truncated":
                self.wfile.write(post.data[: len(post.data) // 2])
            elif fault == "reset":
                self.wfile.write(post.data[: len(post.data) // 2])
                self.wfile.flush()
                time.sleep(0.05)  # let the client read the first half before the reset
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                os.close(self.connection.detach())  # linger 0 turns close into RST
            elif fault == "slow":
                deadline = time.monotonic() + booru.slow_total_s
                for offset in range(0, len(post.data), 16):
                    if time.monotonic() > deadline:
                        break
                    self.wfile.write(post.data[offset:offset + 16])
                    time.sleep(booru.slow_interval_s)
            else:
                self.wfile.write(post.data)
                padding = b"\x00" * 65536
                for _ in range(booru.oversized_bytes // len(padding) + 1):
                    self.wfile.write(padding)
        except OSError:
            pass  # the client gave up, which is what these faults are for


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    booru: FakeBooru

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and aborted transfers are expected here


@dataclass
class FakeBooru:
    """The fake server; use as a context manager. `url` is its base URL once started."""

    n_posts: int = 30
    faults: dict[int, str] = field(default_factory=dict)
    first_id: int = 1000
    robots: str | None = DEFAULT_ROBOTS
    retry_after: str = "1"
    image_size: int = 64
    oversized_bytes: int = 3_000_000
    slow_interval_s: float = 0.25
    slow_total_s: float = 20.0
    relative_urls: bool = False
    auth: tuple[str, str] | None = None
    requests: list[Request] = field(default_factory=list)
    blocked_connections: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.faults.values()) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
        self._lock = threading.Lock()
        self.posts: list[FakePost] = []
        for index in range(self.n_posts):
            post_id = self.first_id + index
            fault = self.faults.get(post_id)
            data, tags = render_avatar_png(post_id, self.image_size)
            if fault == "bomb":
                data = bomb_png()
            post = FakePost(post_id, data, tags, "e" if fault == "explicit" else "g", fault)
            post.api_md5 = None if fault == "deleted" else post.md5
            if fault == "md5_mismatch":
                post.api_md5 = hashlib.md5(b"not the served file").hexdigest()
            if fault != "deleted":
                post.path = f"/{'private' if fault == 'robots' else 'data'}/{post.md5}.png"
            self.posts.append(post)
        self.posts.sort(key=lambda p: -p.id)
        self._by_id = {post.id: post for post in self.posts}
        self._by_path = {post.path: post for post in self.posts if post.path}
        for post in self.posts:
            if post.fault == "redirect_ok":
                self._by_path[f"/moved/{post.md5}.png"] = FakePost(post.id, post.data, post.tags, post.rating)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeBooru:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.booru = self
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._blocked = socket.create_server(("127.0.0.2", 0))
        self._blocked.settimeout(0.1)
        self.blocked_port = self._blocked.getsockname()[1]
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True),
            threading.Thread(target=self._watch_blocked, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._blocked.close()

    def _watch_blocked(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._blocked.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.blocked_connections.append(time.monotonic())
            connection.close()

    # -- what tests look at -------------------------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def post(self, post_id: int) -> FakePost:
        return self._by_id[post_id]

    def api_record(self, post: FakePost) -> dict[str, Any]:
        """The post as posts.json shows it (the subset of Danbooru's fields moepipe reads)."""
        record: dict[str, Any] = {
            "id": post.id,
            "created_at": f"2024-01-{1 + post.id % 28:02d}T12:00:00.000+09:00",
            "score": post.id % 50,
            "source": f"https://example.invalid/art/{post.id}",
            "rating": post.rating,
            "image_width": self.image_size,
            "image_height": self.image_size,
            "tag_string": " ".join(post.tags),
            "tag_string_general": " ".join(post.tags),
            "file_ext": "png",
            "file_size": len(post.data),
            "is_deleted": post.fault == "deleted",
            "is_banned": False,
        }
        if post.api_md5:
            record["md5"] = post.api_md5
        if post.path:
            url = post.path if self.relative_urls else f"{self.url}{post.path}"
            record.update(file_url=url, large_file_url=url, preview_file_url=url)
        return record

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def image_requests(self, post_id: int) -> list[Request]:
        """Requests for this post's file (its listed path; redirect targets not included)."""
        path = self._by_id[post_id].path
        return self.requests_to(path) if path else []

    def listing_requests(self) -> list[Request]:
        return self.requests_to("/posts.json")
