"""``https://`` media that cannot be turned against the worker's own network.

A reference is fetched only when its host is on ``RERANKQ_HTTP_ALLOWED_HOSTS`` (exact names, or ``*.domain``
for subdomains) and **every** address its name resolves to is a public unicast address: loopback, private,
link-local, multicast, reserved, shared (CGNAT) and cloud-metadata addresses are refused, also when
embedded in IPv6 (``::ffff:10.0.0.1``, 6to4, NAT64). The check runs on the first request and on every
redirect (followed here, by hand, at most ``MAX_REDIRECTS``), and the connection goes to the address that was
checked, with TLS verified against the host name, so a DNS answer that changes between check and connect
(rebinding) cannot redirect it (the address rules and the pinned connection live in ``rerankq.netguard``,
shared with completion callbacks). Bodies are capped in bytes (``limits.max_media_bytes``) and the whole fetch,
redirects included, in time (``media.timeout_s``).

Failures are translated here: refusals, 4xx and certificate errors → ``MediaError``; timeouts, resets,
429 and 5xx → ``TransientMediaError`` (the store retries those).
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from rerankq.errors import MediaError, TransientMediaError
from rerankq.netguard import Resolve, address_refusal, host_allowed, pinned_connection, system_resolve
from rerankq.settings import knob

MAX_REDIRECTS = 5
CHUNK = 256 * 1024
REDIRECTS = {301, 302, 303, 307, 308}
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class HttpPolicy:
    """What the fetcher may reach. Built from settings with the strict defaults.

    ``schemes``, ``resolve`` and ``refuse_address`` exist for tests only (settings never change them): a test
    may allow ``http`` and a resolver mapping made-up names to 127.0.0.1, to drive the redirect checks
    against a local plain-HTTP server without sending traffic anywhere else.
    """

    allowed_hosts: frozenset[str] = frozenset()
    schemes: tuple[str, ...] = ("https",)
    resolve: Resolve = system_resolve
    refuse_address: Callable[[str], str | None] = address_refusal
    ssl_context: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    def host_allowed(self, host: str) -> bool:
        return host_allowed(host, self.allowed_hosts)


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    ip: str
    path: str


class HttpFetcher:
    """Fetches one ``https://`` reference under an ``HttpPolicy`` with byte and time caps (see the module doc)."""

    def __init__(self, policy: HttpPolicy, max_bytes: int, timeout_s: float) -> None:
        self.policy, self.max_bytes, self.timeout_s = policy, max_bytes, timeout_s

    def check(self, ref: str, url: str) -> _Target:
        """The address to connect to for ``url``, or ``MediaError`` saying why it is refused."""
        parts = urlsplit(url)
        if parts.scheme not in self.policy.schemes:
            raise MediaError(ref, f"scheme {parts.scheme or '(none)'!r} refused for web media "
                                  f"(allowed: {', '.join(self.policy.schemes)})")
        if parts.username or parts.password:
            raise MediaError(ref, "credentials in the URL are refused")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise MediaError(ref, f"no host in {url!r}")
        if not self.policy.host_allowed(host):
            raise MediaError(ref, f"host {host!r} is not on the allow-list (RERANKQ_HTTP_ALLOWED_HOSTS)")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise MediaError(ref, f"bad port in {url!r}") from exc
        ip = self._resolve(ref, host, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return _Target(parts.scheme, host, port, ip, path)

    def _resolve(self, ref: str, host: str, port: int) -> str:
        try:
            addresses = self.policy.resolve(host, port)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                raise MediaError(ref, f"host {host!r} does not resolve") from exc
            raise TransientMediaError(ref, f"DNS lookup of {host!r} failed ({exc})") from exc
        if not addresses:
            raise MediaError(ref, f"host {host!r} does not resolve")
        for ip in addresses:  # all of them: a name with one internal address is not trusted at all
            if reason := self.policy.refuse_address(ip):
                raise MediaError(ref, f"host {host!r} resolves to a refused {reason}")
        return addresses[0]

    def fetch(self, ref: str) -> bytes:
        """The body of ``ref`` after at most ``MAX_REDIRECTS`` checked redirects."""
        deadline = time.monotonic() + self.timeout_s
        url = ref
        for _ in range(MAX_REDIRECTS + 1):
            target = self.check(ref, url)
            try:
                location, body = self._request(ref, target, deadline)
            except (MediaError, TransientMediaError):
                raise
            except ssl.SSLCertVerificationError as exc:
                raise MediaError(ref, f"TLS certificate of {target.host!r} rejected ({exc.verify_message})") from exc
            except TimeoutError as exc:
                raise TransientMediaError(ref, f"timed out after {self.timeout_s:g} s "
                                               f"({knob('media.timeout_s')})") from exc
            except (OSError, http.client.HTTPException) as exc:
                raise TransientMediaError(ref, f"connection to {target.host!r} failed ({_describe(exc)})") from exc
            if location is None:
                return body
            url = urljoin(url, location)
        raise MediaError(ref, f"more than {MAX_REDIRECTS} redirects")

    def _request(self, ref: str, target: _Target, deadline: float) -> tuple[str | None, bytes]:
        conn = self._connection(target, deadline)
        try:
            conn.request("GET", target.path, headers={"User-Agent": "rerankq", "Accept-Encoding": "identity"})
            response = conn.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise MediaError(ref, f"HTTP {response.status} redirect without a Location")
                return location, b""
            if response.status in TRANSIENT_STATUS:
                raise TransientMediaError(ref, f"HTTP {response.status} {response.reason}")
            if response.status != 200:
                raise MediaError(ref, f"HTTP {response.status} {response.reason}")
            return None, self._read(ref, conn, response, deadline)
        finally:
            conn.close()

    def _connection(self, target: _Target, deadline: float) -> http.client.HTTPConnection:
        timeout = max(0.001, deadline - time.monotonic())
        return pinned_connection(target.scheme, target.host, target.port, target.ip, timeout, self.policy.ssl_context)

    def _read(self, ref: str, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
              deadline: float) -> bytes:
        length = response.getheader("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise MediaError(ref, f"object is {int(length)} bytes, over the limit {self.max_bytes} "
                                  f"({knob('limits.max_media_bytes')})")
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise MediaError(ref, f"object is over the limit {self.max_bytes} bytes "
                                      f"({knob('limits.max_media_bytes')})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if conn.sock is not None:
                conn.sock.settimeout(remaining)
            chunks.append(chunk)
        return b"".join(chunks)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED):
        return errno.errorcode[exc.errno].lower().replace("econn", "connection ")
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
