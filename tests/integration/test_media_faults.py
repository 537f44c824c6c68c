"""Failures injected at the HTTP level, between the store and a real S3 endpoint.

A small proxy on 127.0.0.1 forwards every request to moto's server unchanged, except the next few, which it
answers with a planned fault: ``503`` (S3 SlowDown), ``500`` (InternalError), ``403`` (AccessDenied),
``reset`` (the connection is reset), ``slow`` (the answer comes after the client's timeout).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rerankq.cli.cluster import S3Server
from rerankq.cli.samples import photo_bytes
from rerankq.errors import MediaError, TransientMediaError
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side, VisionBudget
from rerankq.media.store import MediaStore
from rerankq.models.qwen3vl.vision import QwenVision
from rerankq.settings import Settings
from tests.servers import serving

BUCKET = "media-faults"
S3_ERRORS = {"503": (503, "SlowDown"), "500": (500, "InternalError"), "403": (403, "AccessDenied")}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultyProxy

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    do_PUT = do_HEAD = do_POST = do_DELETE = do_GET

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fault = self.server.next_fault(self.command, self.path)
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault in S3_ERRORS:
            status, code = S3_ERRORS[fault]
            self._reply(status, [("Content-Type", "application/xml")],
                        f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode())
            return
        if fault == "slow":
            time.sleep(self.server.slow_s)
        self._forward(body)

    def _forward(self, body: bytes) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            response = upstream.getresponse()
            data = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection",
                                                                                   "content-length")]
            self._reply(response.status, headers, data)
        finally:
            upstream.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class FaultyProxy(ThreadingHTTPServer):
    """Forwards to ``upstream_port``; ``inject(*faults)`` plans the answers to the next GETs of a key."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream_port = upstream_port
        self.slow_s = 1.0
        self.faults: dict[str, list[str | None]] = {}
        self.gets: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def inject(self, key: str, *faults: str | None) -> None:
        with self._lock:
            self.faults[f"/{BUCKET}/{key}"] = list(faults)

    def next_fault(self, method: str, path: str) -> str | None:
        path = path.split("?", 1)[0]
        with self._lock:
            if method != "GET":
                return None
            self.gets[path] = self.gets.get(path, 0) + 1
            planned = self.faults.get(path)
            return planned.pop(0) if planned else None

    def count(self, key: str) -> int:
        return self.gets.get(f"/{BUCKET}/{key}", 0)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and left is expected here


@pytest.fixture(scope="module")
def proxy(s3_server: S3Server, s3: Any) -> Iterator[FaultyProxy]:
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    for i in range(8):
        s3.put_object(Bucket=BUCKET, Key=f"img{i}.jpg", Body=photo_bytes(96, 64, seed=i))
    s3.put_object(Bucket=BUCKET, Key="big.bin", Body=bytes(range(256)) * 400)  # 102 400 bytes
    with serving(FaultyProxy(s3_server.port)) as server:
        yield server


def _settings(proxy: FaultyProxy, **media: Any) -> Settings:
    return Settings(s3_endpoint_url=proxy.url, media={"retries": 3, "retry_backoff_s": 0.01, **media})


@pytest.mark.parametrize("faults", [("503", "503"), ("500",), ("reset",), ("reset", "503", "500")])
def test_transient_failures_are_retried_and_absorbed(proxy: FaultyProxy, faults: tuple[str, ...]) -> None:
    key = f"img{len(faults)}.jpg"
    before = proxy.count(key)
    proxy.inject(key, *faults)
    store = MediaStore(_settings(proxy))
    assert store.fetch(f"s3://{BUCKET}/{key}") == photo_bytes(96, 64, seed=len(faults))
    assert proxy.count(key) - before == len(faults) + 1
    assert store.counters.snapshot()["retries"] == len(faults)


def test_a_timeout_is_retried(proxy: FaultyProxy) -> None:
    proxy.inject("img5.jpg", "slow")
    store = MediaStore(_settings(proxy, timeout_s=0.3))
    assert store.fetch(f"s3://{BUCKET}/img5.jpg") == photo_bytes(96, 64, seed=5)
    assert store.counters.snapshot()["retries"] == 1


def test_permanent_failures_are_not_retried(proxy: FaultyProxy) -> None:
    before = proxy.count("img6.jpg")
    proxy.inject("img6.jpg", "403")
    store = MediaStore(_settings(proxy))
    with pytest.raises(MediaError, match=r"^s3://media-faults/img6.jpg: access denied$"):
        store.fetch(f"s3://{BUCKET}/img6.jpg")
    assert proxy.count("img6.jpg") - before == 1 and "retries" not in store.counters.snapshot()


def test_retries_run_out_into_a_transient_error(proxy: FaultyProxy) -> None:
    before = proxy.count("img7.jpg")
    proxy.inject("img7.jpg", *["503"] * 10)
    store = MediaStore(_settings(proxy, retries=2))
    with pytest.raises(TransientMediaError, match=r"S3 SlowDown \(HTTP 503\) \(gave up after 3 attempts"):
        store.fetch(f"s3://{BUCKET}/img7.jpg")
    assert proxy.count("img7.jpg") - before == 3
    proxy.inject("img7.jpg", *["503"] * 3)
    with MediaResolver(_settings(proxy, retries=2), QwenVision()) as resolver:  # for a side: a per-document MediaError
        (result,) = resolver.resolve_sides([Side(images=[f"s3://{BUCKET}/img7.jpg"])], VisionBudget())
    assert isinstance(result, MediaError) and isinstance(result.__cause__, TransientMediaError)
    proxy.inject("img7.jpg")


def test_a_failed_range_is_retried_alone(proxy: FaultyProxy) -> None:
    before = proxy.count("big.bin")
    proxy.inject("big.bin", None, None, "reset")  # the third range fails once
    store = MediaStore(_settings(proxy), range_bytes=32 * 1024)
    assert store.fetch(f"s3://{BUCKET}/big.bin") == bytes(range(256)) * 400
    assert proxy.count("big.bin") - before == 5  # 4 ranges + 1 retry, not a restart from byte 0


def test_the_cache_serves_a_repeated_object_without_a_second_request(proxy: FaultyProxy) -> None:
    before = proxy.count("img0.jpg")
    with MediaResolver(_settings(proxy), QwenVision()) as resolver:
        for _ in range(3):
            resolver.resolve_sides([Side(images=[f"s3://{BUCKET}/img0.jpg"])] * 5, VisionBudget())
        assert resolver.stats.cache_hits == 2 and resolver.stats.deduplicated == 12
    assert proxy.count("img0.jpg") - before == 1
