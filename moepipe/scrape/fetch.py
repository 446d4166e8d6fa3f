"""The one HTTP client of moepipe: polite, bounded and suspicious.

Every request goes through `Fetcher`: robots.txt (RFC 9309) per origin, an identifying
User-Agent, per-host spacing and concurrency caps shared by all threads, retries with full-jitter
backoff (Retry-After honoured), connect/read timeouts plus a whole-body deadline, a streamed size
cap, hand-followed redirects re-checked at every hop, and an address policy enforced where the
socket opens (moepipe.scrape.netguard). Images are typed by magic bytes and checked for pixel count
before any decode. Failures are `FetchError` with a short machine-readable `reason`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from moepipe.config import ScrapeConfig
from moepipe.errors import redact
from moepipe.images import ImageError, ImageHeader, read_header, sniff_kind
from moepipe.scrape import netguard, robots
from moepipe.scrape.hostlimits import HostLimits

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_TRANSIENT_REASONS = frozenset({"timeout", "connection_error", "truncated"})
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309 §2.5: parse at least 500 KiB; the rest is ignored
ROBOTS_MAX_REDIRECTS = 5  # RFC 9309 §2.3.1.2
ROBOTS_TTL_S = 24 * 3600.0  # RFC 9309 §2.4: do not use a cached copy for longer than 24 hours
ROBOTS_UNREACHABLE_TTL_S = 600.0  # a failed fetch disallows the host, but not for a whole day


class FetchError(Exception):
    """A URL that could not be fetched; `reason` is one short code:

    robots_disallowed, noai, blocked_address, bad_scheme, too_many_redirects, http_<status>,
    timeout, connection_error, too_large, truncated, not_image, too_many_pixels, corrupt
    (also JSON that does not parse), md5_mismatch. `bad_scheme` also covers URLs that are not
    plain http(s): credentials, no host, unparsable. `retryable` says whether a later run might
    succeed (5xx, 429, timeout, connection_error, truncated, and robots_disallowed when robots.txt
    was unreachable) or the failure is permanent.
    """

    def __init__(self, reason: str, url: str, detail: str = "", retryable: bool | None = None) -> None:
        url = redact(url)
        super().__init__(f"{reason}: {url}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.url = url
        self.detail = detail
        if retryable is None:
            status = int(reason[5:]) if reason.startswith("http_") and reason[5:].isdigit() else 0
            retryable = reason in _TRANSIENT_REASONS or status in RETRY_STATUSES or status >= 500
        self.retryable = retryable


@dataclass
class FetchedImage:
    data: bytes
    header: ImageHeader
    final_url: str
    md5: str


@dataclass(frozen=True)
class _Want:
    """What one kind of request accepts."""

    accept: str
    max_bytes: int
    truncate: bool = False  # keep the first max_bytes instead of failing (robots.txt)
    image: bool = False  # refuse noai and non-image bytes as early as possible


@dataclass
class _Reply:
    url: httpx.URL
    status: int
    headers: httpx.Headers
    body: bytes = b""


class _Transient(Exception):
    """A failure worth retrying now: timeout, connection trouble, truncated body."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _check_url(url: httpx.URL) -> None:
    if url.scheme not in ("http", "https"):
        raise FetchError("bad_scheme", str(url), f"scheme {url.scheme or 'none'!r} is not http(s)")
    if url.userinfo:
        raise FetchError("bad_scheme", str(url.copy_with(username=None, password=None)),
                         "URLs with credentials are refused")
    if not url.host:
        raise FetchError("bad_scheme", str(url), "no host")


class Fetcher:
    """Thread-safe HTTP client for JSON APIs and image downloads; use as a context manager."""

    def __init__(self, cfg: ScrapeConfig, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._sleep, self._clock = sleep, clock
        self._token = robots.product_token(cfg.user_agent)
        self._limits = HostLimits(cfg.concurrency, cfg.rate_per_host, sleep, clock)
        self._random = random.Random()
        # origin -> (rules, expiry on self._clock, whether they stem from a failed fetch)
        self._robots: dict[tuple[str, str, int], tuple[robots.RobotsRules, float, bool]] = {}
        self._robots_locks: dict[tuple[str, str, int], threading.Lock] = {}
        self._lock = threading.Lock()
        self._transport = netguard.GuardedTransport(netguard.parse_allowlist(cfg.allow_private),
                                                    max_connections=cfg.concurrency)
        # The client only builds requests (default headers, timeouts) and owns the transport.
        self._client = httpx.Client(transport=self._transport, headers={"User-Agent": cfg.user_agent},
                                    timeout=httpx.Timeout(cfg.timeout_s), follow_redirects=False,
                                    trust_env=False)
        self._json = _Want("application/json", cfg.max_bytes)
        self._image = _Want("image/*", cfg.max_bytes, image=True)
        self._robots_txt = _Want("text/plain", ROBOTS_MAX_BYTES, truncate=True)

    # ---- public ----------------------------------------------------------------------------
    def get_json(self, url: str, params: dict | None = None) -> Any:
        """GET a JSON document (params merged into the query) and return it parsed."""
        reply = self._get(_parse_url(url, params), self._json)
        try:
            return json.loads(reply.body)
        except ValueError:
            raise FetchError("corrupt", str(reply.url), "body is not JSON") from None

    def get_image(self, url: str, expected_md5: str | None = None) -> FetchedImage:
        """GET an image; its type comes from magic bytes, its size is checked before decoding."""
        reply = self._get(_parse_url(url, None), self._image)
        final = str(reply.url)
        try:
            header = read_header(reply.body, self._cfg.max_pixels)
        except ImageError as error:
            raise FetchError(error.reason, final, error.detail, retryable=False) from None
        md5 = hashlib.md5(reply.body, usedforsecurity=False).hexdigest()
        if expected_md5 and md5 != expected_md5.strip().lower():
            raise FetchError("md5_mismatch", final, f"got {md5}, expected {expected_md5}", retryable=False)
        return FetchedImage(reply.body, header, final, md5)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the request pipeline --------------------------------------------------------------
    def _get(self, url: httpx.URL, want: _Want) -> _Reply:
        reply = self._with_retries(
            lambda: self._follow(url, want, self._cfg.max_redirects, self._cfg.respect_robots), url)
        if not 200 <= reply.status < 300:
            raise FetchError(f"http_{reply.status}", str(reply.url))
        return reply

    def _with_retries(self, attempt: Callable[[], _Reply], url: httpx.URL) -> _Reply:
        """Run `attempt` until it gives a non-retryable reply, up to cfg.retries extra times.

        Returns the last reply even when its status is retryable; raises FetchError when the last
        attempt ended in a transient failure.
        """
        failure: _Transient | None = None
        reply: _Reply | None = None
        for number in range(self._cfg.retries + 1):
            wait: float | None = None
            try:
                reply, failure = attempt(), None
                if reply.status not in RETRY_STATUSES:
                    return reply
                wait = self._retry_after(reply.headers.get("retry-after"))
                what = f"http_{reply.status}"
            except _Transient as error:
                reply, failure, what = None, error, error.reason
            if number == self._cfg.retries:
                break
            if wait is None:  # full jitter: uniform in [0, backoff * 2^n], within the cap
                ceiling = min(self._cfg.backoff_s * 2 ** number, self._cfg.retry_after_cap_s)
                wait = self._random.uniform(0, ceiling)
            log.debug("retry %d/%d of %s after %s, waiting %.2fs",
                      number + 1, self._cfg.retries, redact(url), what, wait)
            self._sleep(wait)
        if failure is not None:
            raise FetchError(failure.reason, str(url), failure.detail, retryable=True)
        assert reply is not None
        return reply

    def _retry_after(self, value: str | None) -> float | None:
        """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), capped."""
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        if seconds != seconds:  # NaN
            return None
        return min(max(seconds, 0.0), self._cfg.retry_after_cap_s)

    def _follow(self, url: httpx.URL, want: _Want, max_redirects: int, check_robots: bool) -> _Reply:
        """One attempt: request `url`, following at most `max_redirects` redirects by hand."""
        for hop in range(max_redirects + 1):
            _check_url(url)
            if check_robots:
                self._check_robots(url)
            reply = self._exchange(url, want)
            location = reply.headers.get("location")
            if reply.status not in REDIRECT_STATUSES or location is None:
                return reply
            try:
                url = url.join(location.strip()).copy_with(fragment=None)
            except httpx.InvalidURL as error:
                raise FetchError("bad_scheme", location, str(error), retryable=False) from None
            log.debug("redirect %d from %s to %s", hop + 1, redact(reply.url), redact(url))
        raise FetchError("too_many_redirects", str(url), f"more than {max_redirects}", retryable=False)

    def _exchange(self, url: httpx.URL, want: _Want) -> _Reply:
        """One HTTP request and, for a 2xx answer, its body; nothing else is read."""
        with self._limits.slot(url.host):
            deadline = self._clock() + self._cfg.timeout_s
            request = self._client.build_request("GET", url, headers={
                "Accept": want.accept,
                # Images are compressed already, so they are asked for and read without any
                # Content-Encoding: a gzip bomb posing as an image then fails as not_image.
                "Accept-Encoding": "identity" if want.image else "gzip, deflate"})
            try:
                # Straight to the transport: Client.send inspects Location headers itself even
                # with follow_redirects=False, and raises on ones we want to judge ourselves.
                response = self._transport.handle_request(request)
                response.request = request
            except netguard.BlockedAddress as error:
                raise FetchError("blocked_address", str(url), str(error), retryable=False) from None
            except httpx.TimeoutException as error:
                raise _Transient("timeout", str(error)) from None
            except httpx.TransportError as error:
                raise _Transient("connection_error", str(error) or type(error).__name__) from None
            try:
                log.debug("GET %s -> %d", redact(url), response.status_code)
                if not 200 <= response.status_code < 300:
                    return _Reply(url, response.status_code, response.headers)
                if want.image and robots.forbids_ai(response.headers.get_list("x-robots-tag"), self._token):
                    raise FetchError("noai", str(url), "X-Robots-Tag forbids AI use", retryable=False)
                body = self._read_body(response, url, want, deadline)
                return _Reply(url, response.status_code, response.headers, body)
            finally:
                response.close()

    def _read_body(self, response: httpx.Response, url: httpx.URL, want: _Want, deadline: float) -> bytes:
        declared = _content_length(response)
        if declared is not None and declared > want.max_bytes and not want.truncate:
            raise FetchError("too_large", str(url), f"Content-Length {declared} > {want.max_bytes}",
                             retryable=False)
        chunks: list[bytes] = []
        size = 0
        sniffed = not want.image
        try:
            for chunk in response.iter_raw() if want.image else response.iter_bytes():
                chunks.append(chunk)
                size += len(chunk)
                if size > want.max_bytes:
                    if want.truncate:
                        return b"".join(chunks)[:want.max_bytes]
                    raise FetchError("too_large", str(url), f"more than {want.max_bytes} bytes",
                                     retryable=False)
                if not sniffed and size >= 16:
                    sniffed = True
                    if sniff_kind(b"".join(chunks)[:16]) is None:
                        raise FetchError("not_image", str(url), "magic bytes match no image type",
                                         retryable=False)
                if self._clock() > deadline:
                    raise _Transient("timeout", f"body not complete within {self._cfg.timeout_s}s")
        except httpx.TimeoutException as error:
            raise _Transient("timeout", str(error)) from None
        except httpx.DecodingError as error:  # a Content-Encoding that does not decode
            raise FetchError("corrupt", str(url), str(error), retryable=False) from None
        except httpx.RemoteProtocolError as error:  # h11: the peer closed before the body ended
            raise _Transient("truncated", str(error)) from None
        except httpx.TransportError as error:
            raise _Transient("connection_error", str(error) or type(error).__name__) from None
        if declared is not None and response.num_bytes_downloaded < declared:
            raise _Transient("truncated", f"{response.num_bytes_downloaded} of {declared} bytes")
        return b"".join(chunks)

    # ---- robots.txt ------------------------------------------------------------------------
    def _check_robots(self, url: httpx.URL) -> None:
        rules, _, failed = self._robots_for(url)
        if not rules.allows(url.raw_path.decode("ascii")):
            # Disallowed because robots.txt could not be fetched: a later run may well succeed.
            raise FetchError("robots_disallowed", str(url),
                             "robots.txt unreachable" if failed else "", retryable=failed)

    def _robots_for(self, url: httpx.URL) -> tuple[robots.RobotsRules, float, bool]:
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        with self._lock:
            origin_lock = self._robots_locks.setdefault(origin, threading.Lock())
        with origin_lock:  # one fetch per origin even when many threads arrive at once
            cached = self._robots.get(origin)
            if cached and cached[1] > self._clock():
                return cached
            rules, failed = self._fetch_robots(url.copy_with(raw_path=b"/robots.txt", fragment=None))
            ttl = ROBOTS_UNREACHABLE_TTL_S if failed else ROBOTS_TTL_S
            self._robots[origin] = (rules, self._clock() + ttl, failed)
            return self._robots[origin]

    def _fetch_robots(self, url: httpx.URL) -> tuple[robots.RobotsRules, bool]:
        """The rules, and whether they stand in for a failed fetch (RFC 9309 §2.3.1)."""
        try:
            reply = self._with_retries(
                lambda: self._follow(url, self._robots_txt, ROBOTS_MAX_REDIRECTS, check_robots=False), url)
        except FetchError as error:
            if error.reason == "too_many_redirects":  # §2.3.1.2: MAY be treated as unavailable
                log.debug("robots: %s redirects too often; allowing all", url)
                return robots.RobotsRules.allow_all(), False
            if error.retryable:  # §2.3.1.4: unreachable
                log.debug("robots: %s unreachable (%s); disallowing all", url, error.reason)
                return robots.RobotsRules.disallow_all(), True
            raise  # the address policy or URL checks refuse this origin: report that reason
        if 200 <= reply.status < 300:
            log.debug("robots: parsed %s (%d bytes)", reply.url, len(reply.body))
            return robots.parse_robots(reply.body.decode("utf-8", "replace"), self._token), False
        # 4xx is "unavailable": allow all (§2.3.1.3). 429 is overload, treated like 5xx as Google does.
        if 300 <= reply.status < 500 and reply.status != 429:
            log.debug("robots: %s answered %d; allowing all", url, reply.status)
            return robots.RobotsRules.allow_all(), False
        log.debug("robots: %s answered %d; disallowing all", url, reply.status)
        return robots.RobotsRules.disallow_all(), True


def _parse_url(url: str, params: dict | None) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
        if params:
            parsed = parsed.copy_merge_params(params)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        raise FetchError("bad_scheme", str(url), f"not a valid URL ({error})", retryable=False) from None
    return parsed.copy_with(fragment=None)


def _content_length(response: httpx.Response) -> int | None:
    """Announced wire length (compressed, if encoded: compared with wire bytes received)."""
    value = response.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
