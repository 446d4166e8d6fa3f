"""Which network addresses moepipe may connect to, enforced where the socket is opened.

The check lives in the connection layer, not in front of it: `GuardedBackend` resolves the host
itself, refuses the connection if ANY resolved address is non-public (and not allow-listed), and
then connects to exactly the addresses it checked. That pins the connection to the checked IP, so
a DNS answer that changes between check and connect (rebinding) cannot smuggle a request to
an internal address, and every hop of a redirect chain and every robots.txt request is covered
without the caller having to remember it. TLS still verifies the certificate against the host
name, because httpcore passes the origin's host as server_hostname, not the address we dialled.

Ports are not restricted: booru mirrors and test servers legitimately use non-default ports.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddress(Exception):
    """A host resolved to an address that the policy refuses; no connection was made."""

    def __init__(self, host: str, address: str) -> None:
        super().__init__(f"{host} resolves to {address}, which is not a public address")
        self.host = host
        self.address = address


def parse_allowlist(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """Addresses or CIDR networks (as in ScrapeConfig.allow_private) as network objects."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address carries and that a stack may actually dial."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.ipv4_mapped] if address.ipv4_mapped else []
    if address.sixtofour:
        found.append(address.sixtofour)
    if address.teredo:
        found.append(address.teredo[1])
    if address in ipaddress.ip_network("64:ff9b::/96"):  # NAT64 well-known prefix
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _non_public(address: IPAddress) -> bool:
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def is_blocked(address: str | IPAddress, allow: tuple[IPNetwork, ...] = ()) -> bool:
    """True when `address` (or an IPv4 address embedded in it) is non-public and not allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0]) if isinstance(address, str) else address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    # ::ffff:127.0.0.1 is the same socket peer as 127.0.0.1, so the allowlist judges the IPv4 form.
    for candidate in (ip, mapped):
        if candidate is not None and any(candidate in network for network in allow):
            return False
    if _non_public(ip):
        return True
    return any(_non_public(inner) for inner in _embedded_ipv4(ip))


def resolve_checked(host: str, port: int, allow: tuple[IPNetwork, ...]) -> list[str]:
    """Every address `host` resolves to, if all pass the policy; raises BlockedAddress otherwise.

    All addresses are checked, not only the first, because the socket layer may fall back to any
    of them. Resolution failures raise httpcore.ConnectError, like a refused connection.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {error}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if is_blocked(address, allow):
            log.debug("refusing %s:%s: resolves to %s", host, port, address)
            raise BlockedAddress(host, address)
    return addresses


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore network backend that dials only policy-approved, already-resolved addresses."""

    def __init__(self, allow: tuple[IPNetwork, ...]) -> None:
        self._allow = allow
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        failure: Exception | None = None
        for address in resolve_checked(host, port, self._allow):
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as error:
                failure = error
        raise failure or httpcore.ConnectError(f"no address for {host!r}")

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        raise BlockedAddress(path, "unix socket")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_HTTPCORE_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError,
                    httpcore.UnsupportedProtocol, httpcore.ProxyError)


def _as_httpx(error: Exception) -> Exception:
    # httpcore and httpx name their exceptions alike; take the most specific httpx twin.
    for cls in type(error).__mro__:
        twin = getattr(httpx, cls.__name__, None)
        if isinstance(twin, type) and issubclass(twin, httpx.TransportError):
            return twin(str(error))
    return httpx.TransportError(str(error))


class _Stream(httpx.SyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._inner
        except _HTTPCORE_ERRORS as error:
            raise _as_httpx(error) from error

    def close(self) -> None:
        self._inner.close()


class GuardedTransport(httpx.BaseTransport):
    """httpx transport over an httpcore pool whose every connection goes through GuardedBackend.

    Built from public httpx/httpcore APIs only (httpx.HTTPTransport does not accept a network
    backend). Proxies are deliberately unsupported: a proxy would dial the target for us, out of
    reach of the address check.
    """

    def __init__(self, allow: tuple[IPNetwork, ...], max_connections: int) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            network_backend=GuardedBackend(allow),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = self._pool.handle_request(core_request)
        except _HTTPCORE_ERRORS as error:
            raise _as_httpx(error) from error
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Stream(response.stream), extensions=response.extensions)

    def close(self) -> None:
        self._pool.close()
