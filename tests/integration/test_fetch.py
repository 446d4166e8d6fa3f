"""Fetcher against real loopback servers (tests/support/httpserver.py); waits go to a recorder."""

import gzip
import hashlib
import io
import socket
import struct
import threading
import time
import zlib
from email.utils import formatdate

import pytest
from PIL import Image

from moepipe.config import ScrapeConfig
from moepipe.scrape.fetch import Fetcher, FetchError
from moepipe.scrape.netguard import is_blocked, parse_allowlist
from tests.support.httpserver import Reply, TestServer

UA = "moepipe/9.9 (+https://example.invalid/bot)"


def config(**overrides) -> ScrapeConfig:
    values = dict(user_agent=UA, allow_private=["127.0.0.1"], rate_per_host=0, retries=0,
                  backoff_s=0.1, timeout_s=1.0, concurrency=4)
    return ScrapeConfig(**{**values, **overrides})


@pytest.fixture
def server():
    with TestServer() as running:
        yield running


@pytest.fixture
def outsider():
    """A listener on 127.0.0.2, which the configs above do not allow."""
    with TestServer("127.0.0.2") as running:
        yield running


class Recorder:
    def __init__(self, **overrides):
        self.sleeps: list[float] = []
        self.fetcher = Fetcher(config(**overrides), sleep=self.sleeps.append)

    def fail(self, call, *args, **kwargs) -> FetchError:
        with pytest.raises(FetchError) as caught:
            call(*args, **kwargs)
        return caught.value


@pytest.fixture
def make():
    made: list[Recorder] = []

    def factory(**overrides) -> Recorder:
        made.append(Recorder(**overrides))
        return made[-1]

    yield factory
    for recorder in made:
        recorder.fetcher.close()


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes whose IHDR claims width x height: a decompression bomb header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---- basics ---------------------------------------------------------------------------------

def test_json_with_params_and_user_agent_on_every_request(server, make):
    server.route("/api/posts.json", lambda req: Reply.json({"params": req.params}))
    got = make().fetcher.get_json(server.url("/api/posts.json?fixed=1"), params={"tags": "chibi solo", "page": 2})
    assert got == {"params": {"fixed": "1", "tags": "chibi solo", "page": "2"}}
    assert [r.path for r in server.requests] == ["/robots.txt", "/api/posts.json"]
    assert all(r.headers["user-agent"] == UA for r in server.requests)


def test_json_that_does_not_parse_is_corrupt(server, make):
    server.route("/bad.json", Reply.text("<html>challenge</html>"))
    assert make().fail(make().fetcher.get_json, server.url("/bad.json")).reason == "corrupt"


def test_context_manager_closes(server):
    server.route("/a", Reply.json([1]))
    with Fetcher(config()) as fetcher:
        assert fetcher.get_json(server.url("/a")) == [1]


# ---- robots.txt -----------------------------------------------------------------------------

def test_robots_group_of_our_token_is_obeyed_and_fetched_once(server, make):
    server.route("/robots.txt", Reply.text(
        "User-agent: *\nDisallow: /\n\nUser-agent: MOEPIPE\nDisallow: /private\nAllow: /private/ok\n"))
    server.route("/public", Reply.json("p"))
    server.route("/private/ok", Reply.json("ok"))
    rec = make()
    assert rec.fetcher.get_json(server.url("/public")) == "p"
    assert rec.fetcher.get_json(server.url("/private/ok")) == "ok"
    error = rec.fail(rec.fetcher.get_json, server.url("/private/secret"))
    assert (error.reason, error.retryable) == ("robots_disallowed", False)
    assert server.hits("/private/secret") == 0
    assert server.hits("/robots.txt") == 1


def test_robots_fetched_once_per_origin_under_concurrency(server, make):
    server.route("/robots.txt", Reply.text("User-agent: *\nAllow: /\n", delay_s=0.1))
    server.route("/a", Reply.json(1))
    rec = make()
    threads = [threading.Thread(target=rec.fetcher.get_json, args=(server.url("/a"),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.hits("/robots.txt") == 1 and server.hits("/a") == 4


def test_robots_cache_expires_after_a_day(server):
    now = [1000.0]
    server.route("/a", Reply.json(1))
    with Fetcher(config(), clock=lambda: now[0]) as fetcher:
        fetcher.get_json(server.url("/a"))
        now[0] += 23 * 3600
        fetcher.get_json(server.url("/a"))
        assert server.hits("/robots.txt") == 1
        now[0] += 2 * 3600
        fetcher.get_json(server.url("/a"))
    assert server.hits("/robots.txt") == 2


@pytest.mark.parametrize("status", [404, 403, 410])
def test_robots_4xx_allows_all(server, make, status):
    server.route("/robots.txt", Reply.text("User-agent: *\nDisallow: /\n", status=status))
    server.route("/a", Reply.json(1))
    assert make().fetcher.get_json(server.url("/a")) == 1


@pytest.mark.parametrize("robots_reply", [Reply(503), Reply(500), Reply(429),
                                          Reply(200, b"x" * 99, reset_after=5)])
def test_robots_5xx_or_unreachable_disallows_all(server, make, robots_reply):
    server.route("/robots.txt", robots_reply)
    server.route("/a", Reply.json(1))
    rec = make(retries=2)
    error = rec.fail(rec.fetcher.get_json, server.url("/a"))
    # retryable: the host may be back on a later run
    assert (error.reason, error.retryable) == ("robots_disallowed", True)
    assert server.hits("/robots.txt") == 3 and server.hits("/a") == 0
    assert len(rec.sleeps) == 2


def test_robots_follows_redirects_up_to_five(server, make):
    for hop in range(4):
        server.route(f"/robots{hop}", Reply.redirect(f"/robots{hop + 1}", status=301))
    server.route("/robots.txt", Reply.redirect("/robots0"))
    server.route("/robots4", Reply.text("User-agent: *\nDisallow: /a\n"))
    rec = make()
    assert rec.fail(rec.fetcher.get_json, server.url("/a")).reason == "robots_disallowed"
    assert server.hits("/robots4") == 1


def test_robots_redirecting_more_than_five_times_counts_as_unavailable(server, make):
    server.route("/robots.txt", Reply.redirect("/robots.txt"))
    server.route("/a", Reply.json(1))
    assert make().fetcher.get_json(server.url("/a")) == 1
    assert server.hits("/robots.txt") == 6


def test_respect_robots_false_never_asks(server, make):
    server.route("/robots.txt", Reply.text("User-agent: *\nDisallow: /\n"))
    server.route("/a", Reply.json(1))
    assert make(respect_robots=False).fetcher.get_json(server.url("/a")) == 1
    assert server.hits("/robots.txt") == 0


def test_robots_request_obeys_the_address_policy(server, outsider, make):
    server.route("/robots.txt", Reply.redirect(outsider.url("/robots.txt")))
    server.route("/a", Reply.json(1))
    rec = make()
    assert rec.fail(rec.fetcher.get_json, server.url("/a")).reason == "blocked_address"
    assert outsider.connections == 0 and server.hits("/a") == 0


# ---- X-Robots-Tag ---------------------------------------------------------------------------

@pytest.mark.parametrize("tag, refused", [
    ("noai", True), ("noimageai", True), ("moepipe: noai", True), ("otherbot: noai", False),
    ("noindex", False),
])
def test_x_robots_tag_noai_refuses_images(server, make, tag, refused):
    server.route("/img", Reply(200, png(), {"X-Robots-Tag": tag}))
    rec = make()
    if refused:
        error = rec.fail(rec.fetcher.get_image, server.url("/img"))
        assert (error.reason, error.retryable) == ("noai", False)
    else:
        assert rec.fetcher.get_image(server.url("/img")).header.kind == "png"


def test_x_robots_tag_does_not_apply_to_json(server, make):
    server.route("/a", Reply.json(1, headers={"X-Robots-Tag": "noai"}))
    assert make().fetcher.get_json(server.url("/a")) == 1


# ---- retries --------------------------------------------------------------------------------

def test_429_honours_retry_after_seconds(server, make):
    server.route("/a", [Reply(429, headers={"Retry-After": "2"}), Reply.json("ok")])
    rec = make(retries=3)
    assert rec.fetcher.get_json(server.url("/a")) == "ok"
    assert rec.sleeps == [2.0] and server.hits("/a") == 2


def test_retry_after_http_date_and_cap(server, make):
    soon = formatdate(time.time() + 3, usegmt=True)
    server.route("/a", [Reply(503, headers={"Retry-After": soon}), Reply(503, headers={"Retry-After": "120"}),
                        Reply.json("ok")])
    rec = make(retries=2, retry_after_cap_s=5)
    assert rec.fetcher.get_json(server.url("/a")) == "ok"
    assert 1.0 <= rec.sleeps[0] <= 3.0 and rec.sleeps[1] == 5.0


def test_repeated_503_gives_up_after_retries_with_jittered_backoff(server, make):
    server.route("/a", Reply(503))
    rec = make(retries=3, backoff_s=0.1)
    error = rec.fail(rec.fetcher.get_json, server.url("/a"))
    assert (error.reason, error.retryable) == ("http_503", True)
    assert server.hits("/a") == 4 and len(rec.sleeps) == 3
    assert all(0 <= wait <= 0.1 * 2 ** n for n, wait in enumerate(rec.sleeps))


def test_each_retryable_status_is_retried(server, make):
    server.route("/a", [Reply(500), Reply(502), Reply(504), Reply(429), Reply.json("ok")])
    rec = make(retries=4)
    assert rec.fetcher.get_json(server.url("/a")) == "ok" and server.hits("/a") == 5


@pytest.mark.parametrize("status", [404, 403, 401, 400])
def test_permanent_statuses_fail_at_once(server, make, status):
    server.route("/a", Reply(status))
    rec = make(retries=3)
    error = rec.fail(rec.fetcher.get_json, server.url("/a"))
    assert (error.reason, error.retryable) == (f"http_{status}", False)
    assert server.hits("/a") == 1 and rec.sleeps == []


# ---- timeouts, sizes, broken connections ----------------------------------------------------

def test_read_timeout_is_retried_then_reported(server, make):
    server.route("/slow", Reply.json(1, delay_s=3))
    rec = make(timeout_s=0.3, retries=1)
    error = rec.fail(rec.fetcher.get_json, server.url("/slow"))
    assert (error.reason, error.retryable) == ("timeout", True) and server.hits("/slow") == 2


def test_trickling_body_hits_the_whole_body_deadline(server, make):
    server.route("/drip", Reply(200, b"1" * 60, chunk_size=1, chunk_delay_s=0.1))
    rec = make(timeout_s=0.5)
    started = time.monotonic()
    assert rec.fail(rec.fetcher.get_json, server.url("/drip")).reason == "timeout"
    assert time.monotonic() - started < 2.0  # each read is quick; only the deadline stops it


def test_announced_length_over_the_cap_fails_before_reading(server, make):
    server.route("/huge", Reply(200, b"x" * 100, declared_length=50_000_000, delay_s=0))
    rec = make(max_bytes=4096)
    error = rec.fail(rec.fetcher.get_image, server.url("/huge"))
    assert (error.reason, error.retryable) == ("too_large", False)


def test_streamed_body_over_the_cap_fails(server, make):
    server.route("/stream", Reply(200, b"x" * 10_000, close_delimited=True))
    rec = make(max_bytes=4096)
    assert rec.fail(rec.fetcher.get_json, server.url("/stream")).reason == "too_large"


def test_gzip_json_is_decoded_and_the_cap_applies_to_the_decoded_size(server, make):
    server.route("/small.json", Reply(200, gzip.compress(b"[1, 2, 3]"), {"Content-Encoding": "gzip"}))
    bomb = gzip.compress(b"[" + b"0," * 50_000 + b"0]")
    server.route("/bomb.json", Reply(200, bomb, {"Content-Encoding": "gzip"}))
    rec = make(max_bytes=4096)
    assert len(bomb) < 4096 and rec.fetcher.get_json(server.url("/small.json")) == [1, 2, 3]
    assert rec.fail(rec.fetcher.get_json, server.url("/bomb.json")).reason == "too_large"


def test_images_are_never_content_decoded(server, make):
    server.route("/z.png", Reply(200, gzip.compress(png()), {"Content-Encoding": "gzip"}))
    rec = make()
    assert rec.fail(rec.fetcher.get_image, server.url("/z.png")).reason == "not_image"


def test_body_shorter_than_its_length_is_truncated_and_retried(server, make):
    server.route("/short", Reply(200, b"[1, 2", declared_length=500))
    rec = make(retries=1)
    error = rec.fail(rec.fetcher.get_json, server.url("/short"))
    assert (error.reason, error.retryable) == ("truncated", True) and server.hits("/short") == 2


def test_connection_reset_mid_body_is_retried(server, make):
    server.route("/reset", [Reply(200, b"x" * 5000, reset_after=100)] * 2 + [Reply.json("ok")])
    rec = make(retries=2)
    assert rec.fetcher.get_json(server.url("/reset")) == "ok" and server.hits("/reset") == 3
    server.route("/reset", Reply(200, b"x" * 5000, reset_after=100))
    error = rec.fail(rec.fetcher.get_json, server.url("/reset"))
    assert (error.reason, error.retryable) == ("connection_error", True)


def test_refused_connection_is_a_connection_error(make):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound but not listening: connections are refused
        rec = make(respect_robots=False, retries=1)
        error = rec.fail(rec.fetcher.get_json, f"http://127.0.0.1:{port}/a")
    assert (error.reason, error.retryable) == ("connection_error", True) and len(rec.sleeps) == 1


# ---- images ---------------------------------------------------------------------------------

def test_image_type_comes_from_magic_bytes_not_headers_or_extension(server, make):
    data = png(8, 6)
    server.route("/pic.jpg", Reply(200, data, {"Content-Type": "text/html"}))
    got = make().fetcher.get_image(server.url("/pic.jpg"), expected_md5=hashlib.md5(data).hexdigest().upper())
    assert (got.header.kind, got.header.width, got.header.height) == ("png", 8, 6)
    assert got.data == data and got.md5 == hashlib.md5(data).hexdigest()
    assert got.final_url == server.url("/pic.jpg")
    assert server.requests_for("/pic.jpg")[0].headers["accept-encoding"] == "identity"


def test_html_sent_as_image_is_refused_without_reading_it_all(server, make):
    page = b"<!doctype html><html>" + b"x" * 6400
    server.route("/x.png", Reply(200, page, {"Content-Type": "image/png"}, chunk_size=64, chunk_delay_s=0.05))
    rec = make(timeout_s=10)
    started = time.monotonic()
    error = rec.fail(rec.fetcher.get_image, server.url("/x.png"))
    assert (error.reason, error.retryable) == ("not_image", False)
    assert time.monotonic() - started < 1.5  # reading all 100 chunks would take 5 s


def test_decompression_bomb_header_is_refused(server, make):
    server.route("/bomb.png", Reply(200, png_declaring(30000, 30000)))
    rec = make()
    assert rec.fail(rec.fetcher.get_image, server.url("/bomb.png")).reason == "too_many_pixels"


def test_broken_image_is_corrupt(server, make):
    server.route("/broken.png", Reply(200, b"\x89PNG\r\n\x1a\n" + b"garbage" * 10))
    rec = make()
    assert rec.fail(rec.fetcher.get_image, server.url("/broken.png")).reason == "corrupt"


def test_md5_mismatch_is_permanent(server, make):
    server.route("/p.png", Reply(200, png()))
    rec = make(retries=3)
    error = rec.fail(rec.fetcher.get_image, server.url("/p.png"), expected_md5="0" * 32)
    assert (error.reason, error.retryable) == ("md5_mismatch", False) and server.hits("/p.png") == 1


# ---- redirects and the address policy -------------------------------------------------------

def test_relative_redirects_are_followed(server, make):
    server.route("/a/start", Reply.redirect("next?x=1"))
    server.route("/a/next", Reply.redirect("/final.png", status=307))
    server.route("/final.png", Reply(200, png()))
    got = make().fetcher.get_image(server.url("/a/start"))
    assert got.final_url == server.url("/final.png") and server.requests_for("/a/next")[0].query == "x=1"


def test_redirect_loop_stops_at_max_redirects(server, make):
    server.route("/loop", Reply.redirect("/loop"))
    rec = make(max_redirects=2)
    assert rec.fail(rec.fetcher.get_json, server.url("/loop")).reason == "too_many_redirects"
    assert server.hits("/loop") == 3


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://127.0.0.1/x", "data:text/plain,hi",
                                      "gopher://127.0.0.1/", "http://user:secret@127.0.0.1/"])
def test_redirect_to_another_scheme_or_with_credentials_is_refused(server, make, location):
    server.route("/go", Reply.redirect(location))
    rec = make()
    assert rec.fail(rec.fetcher.get_image, server.url("/go")).reason == "bad_scheme"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "http://u:p@127.0.0.1/", "not a url"])
def test_bad_urls_are_refused_before_any_request(make, url):
    rec = make()
    assert rec.fail(rec.fetcher.get_json, url).reason == "bad_scheme"


def test_redirect_to_a_disallowed_address_makes_no_connection(server, outsider, make):
    outsider.route("/x.png", Reply(200, png()))
    server.route("/go", Reply.redirect(outsider.url("/x.png")))
    rec = make(respect_robots=False)
    error = rec.fail(rec.fetcher.get_image, server.url("/go"))
    assert (error.reason, error.retryable) == ("blocked_address", False)
    time.sleep(0.2)
    assert outsider.connections == 0
    # the listener would have noticed a connection: prove the probe works
    socket.create_connection(("127.0.0.2", outsider.port)).close()
    deadline = time.monotonic() + 2
    while outsider.connections == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outsider.connections == 1


def test_allowlist_takes_networks(outsider, make):
    outsider.route("/a", Reply.json("inside"))
    assert make(allow_private=["127.0.0.0/8"]).fetcher.get_json(outsider.url("/a")) == "inside"


def test_loopback_is_blocked_without_allowlist(server, make):
    rec = make(allow_private=[])
    assert rec.fail(rec.fetcher.get_json, server.url("/a")).reason == "blocked_address"
    assert server.connections == 0


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "127.0.0.2",
                                     "0.0.0.0", "224.0.0.1", "240.0.0.1", "100.64.0.1", "::1", "::",
                                     "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.2", "::ffff:10.0.0.1",
                                     "2002:a00:1::", "64:ff9b::a00:1"])
def test_non_public_addresses_are_blocked(address):
    assert is_blocked(address, parse_allowlist(["127.0.0.1"]))


def test_loopback_needs_the_allowlist():
    assert is_blocked("127.0.0.1") and is_blocked("::ffff:127.0.0.1")


@pytest.mark.parametrize("address, allow", [("93.184.215.14", []), ("2606:4700::1111", []),
                                            ("127.0.0.1", ["127.0.0.1"]), ("::ffff:127.0.0.1", ["127.0.0.1"]),
                                            ("10.9.8.7", ["10.0.0.0/8"])])
def test_public_or_allow_listed_addresses_pass(address, allow):
    assert not is_blocked(address, parse_allowlist(allow))


# ---- politeness under threads ---------------------------------------------------------------

def test_concurrency_is_capped(server):
    server.route("/slow", Reply.json(1, delay_s=0.15))
    with Fetcher(config(concurrency=2, respect_robots=False)) as fetcher:
        threads = [threading.Thread(target=fetcher.get_json, args=(server.url("/slow"),)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert server.hits("/slow") == 6 and server.max_in_flight == 2


def test_rate_limit_spaces_requests_per_host(server):
    server.route("/a", Reply.json(1))
    interval = 1 / 10
    with Fetcher(config(rate_per_host=10, respect_robots=False, concurrency=4)) as fetcher:
        threads = [threading.Thread(target=fetcher.get_json, args=(server.url("/a"),)) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    times = sorted(r.time for r in server.requests_for("/a"))
    gaps = [b - a for a, b in zip(times, times[1:])]
    # arrival times carry scheduling jitter, hence the slack; without spacing all gaps are ~0
    assert len(times) == 5 and min(gaps) >= interval * 0.5, gaps
    assert times[-1] - times[0] >= 4 * interval * 0.8


def test_secrets_in_query_strings_are_redacted_from_errors():
    from moepipe.scrape.fetch import FetchError, redact

    assert redact("http://h/posts.json?login=a&api_key=s3cret&page=2") == "http://h/posts.json?login=a&api_key=***&page=2"
    error = FetchError("http_401", "http://h/p?api_key=s3cret")
    assert "s3cret" not in str(error) and "s3cret" not in error.url
