"""Web media: redirects re-checked hop by hop, byte and time caps, retries — against a local HTTP server.

There is no internet here and no test may reach anything but 127.0.0.1, so these tests use the fetcher's
test-only policy (``HttpPolicy``: ``schemes=("http",)``, a fake resolver, and an address check that lets
exactly 127.0.0.1 through). Production settings cannot build that policy; the refusal logic exercised is
the production one. Made-up names (``good.test``) do not resolve on this machine, so a successful fetch also
proves the connection goes to the address that was checked, not to a fresh DNS answer.
"""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rerankq.cli.samples import photo_bytes
from rerankq.errors import MediaError, TransientMediaError
from rerankq.media.http import HttpPolicy, address_refusal
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side, VisionBudget
from rerankq.media.store import MediaStore
from rerankq.models.qwen3vl.vision import QwenVision
from rerankq.settings import Settings
from tests.servers import serving

IMAGE = photo_bytes(64, 64)


class _Handler(BaseHTTPRequestHandler):
    server: WebServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        port = self.server.server_address[1]
        redirects = {
            "/to-good": f"http://good.test:{port}/img.jpg", "/to-relative": "/img.jpg",
            "/to-private": f"http://private.test:{port}/img.jpg", "/to-metadata": "http://metadata.test/latest/",
            "/to-unlisted": f"http://127.0.0.1:{port}/img.jpg", "/to-ftp": "ftp://good.test/img.jpg",
            "/loop": "/loop", "/to-rebind": f"http://rebind.test:{port}/img.jpg",
        }
        if self.path in redirects:
            return self._reply(302, b"", location=redirects[self.path])
        if self.path == "/img.jpg":
            return self._reply(200, IMAGE)
        if self.path == "/big":
            return self._reply(200, b"x" * 5000)
        if self.path == "/big-unannounced":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 5000)
            return None
        if self.path == "/flaky" and self.server.paths.count("/flaky") <= 2:
            return self._reply(503, b"busy")
        if self.path == "/flaky":
            return self._reply(200, IMAGE)
        if self.path == "/slow":
            time.sleep(1.0)
            return self._reply(200, IMAGE)
        return self._reply(404, b"not here")

    def _reply(self, status: int, body: bytes, location: str | None = None) -> None:
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class WebServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.paths: list[str] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture(scope="module")
def web() -> Iterator[WebServer]:
    with serving(WebServer()) as server:
        yield server


def _policy() -> HttpPolicy:
    answers = {"good.test": ["127.0.0.1"], "private.test": ["10.0.0.7"], "metadata.test": ["169.254.169.254"]}
    rebinds = iter([["127.0.0.1"], ["10.0.0.7"]])  # the first answer passes, the next one points inside

    def resolve(host: str, port: int) -> list[str]:
        return next(rebinds) if host == "rebind.test" else answers[host]

    return HttpPolicy(allowed_hosts=frozenset({"good.test", "private.test", "metadata.test", "rebind.test"}),
                      schemes=("http",), resolve=resolve,
                      refuse_address=lambda ip: None if ip == "127.0.0.1" else address_refusal(ip))


@pytest.fixture()
def store(web: WebServer) -> MediaStore:
    web.paths.clear()
    settings = Settings(limits={"max_media_bytes": 4000}, media={"timeout_s": 0.5, "retry_backoff_s": 0.01})
    return MediaStore(settings, http_policy=_policy())


def _url(web: WebServer, path: str) -> str:
    return f"http://good.test:{web.server_address[1]}{path}"


@pytest.mark.parametrize("path", ["/img.jpg", "/to-good", "/to-relative"])
def test_allowed_fetches_and_redirects(store: MediaStore, web: WebServer, path: str) -> None:
    assert store.fetch(_url(web, path)) == IMAGE


@pytest.mark.parametrize(("path", "reason"), [
    ("/to-private", "'private.test' resolves to a refused private address 10.0.0.7"),
    ("/to-metadata", "'metadata.test' resolves to a refused cloud metadata address 169.254.169.254"),
    ("/to-unlisted", "host '127.0.0.1' is not on the allow-list"),
    ("/to-ftp", "scheme 'ftp' refused"),
    ("/loop", "more than 5 redirects"),
])
def test_every_redirect_is_checked_again(store: MediaStore, web: WebServer, path: str, reason: str) -> None:
    url = _url(web, path)
    with pytest.raises(MediaError, match=reason) as info:
        store.fetch(url)
    assert info.value.ref == url
    assert "/img.jpg" not in web.paths  # the refused hop was never requested


def test_rebinding_between_check_and_redirect_is_caught(web: WebServer) -> None:
    store = MediaStore(Settings(), http_policy=_policy())
    first = f"http://rebind.test:{web.server_address[1]}/to-rebind"  # answers 127.0.0.1, then 10.0.0.7
    with pytest.raises(MediaError, match=r"'rebind.test' resolves to a refused private address 10\.0\.0\.7"):
        store.fetch(first)
    assert web.paths[-1] == "/to-rebind"


@pytest.mark.parametrize("path", ["/big", "/big-unannounced"])
def test_bodies_over_the_byte_cap_are_refused(store: MediaStore, web: WebServer, path: str) -> None:
    with pytest.raises(MediaError, match=r"over the limit 4000 .*limits.max_media_bytes"):
        store.fetch(_url(web, path))
    assert web.paths.count(path) == 1  # permanent: not retried


def test_client_errors_are_permanent(store: MediaStore, web: WebServer) -> None:
    with pytest.raises(MediaError, match="HTTP 404"):
        store.fetch(_url(web, "/missing.jpg"))
    assert web.paths == ["/missing.jpg"]


def test_server_errors_are_retried(store: MediaStore, web: WebServer) -> None:
    web.paths[:] = [p for p in web.paths if p != "/flaky"]
    assert store.fetch(_url(web, "/flaky")) == IMAGE
    assert web.paths.count("/flaky") == 3 and store.counters.snapshot()["retries"] == 2


def test_slow_servers_hit_the_time_cap(store: MediaStore, web: WebServer) -> None:
    with pytest.raises(TransientMediaError,
                       match=r"timed out after 0.5 s \(media.timeout_s, RERANKQ_MEDIA__TIMEOUT_S\).*gave up after 4"):
        store.fetch(_url(web, "/slow"))


def test_web_images_resolve_through_the_resolver(web: WebServer) -> None:
    store = MediaStore(Settings(), http_policy=_policy())
    with MediaResolver(Settings(), QwenVision(), store) as resolver:
        side = resolver.resolve_side(Side(images=[_url(web, "/to-good")]), VisionBudget())
    assert side.vision[0].kind == "image"


def _certificate(directory: Any, name: str) -> tuple[str, str]:
    cert, key = str(directory / f"{name}.pem"), str(directory / f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_verifies_the_host_name_on_the_pinned_connection(tmp_path: Any) -> None:
    cert, key = _certificate(tmp_path, "good.test")
    other, _ = _certificate(tmp_path, "other.test")
    server = WebServer()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://good.test:{server.server_address[1]}/img.jpg"
        trusted = dataclasses.replace(_policy(), schemes=("https",),
                                      ssl_context=ssl.create_default_context(cafile=cert))
        assert MediaStore(Settings(), http_policy=trusted).fetch(url) == IMAGE
        untrusted = dataclasses.replace(trusted, ssl_context=ssl.create_default_context(cafile=other))
        with pytest.raises(MediaError, match=r"TLS certificate of 'good\.test' rejected"):
            MediaStore(Settings(), http_policy=untrusted).fetch(url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
