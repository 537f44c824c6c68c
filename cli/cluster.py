"""Private services for the embedded default, the benchmark and the tests: a ``redis-server`` on a free
port and an in-process S3 endpoint (moto's server, real S3 over HTTP). Each is a context manager that
stops what it started, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before accepting connections")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not accept connections on port {port} within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0, group: bool = False) -> None:
    """SIGTERM ``proc`` (its whole process group with ``group``), SIGKILL it after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        if group:  # stray children of an exited leader
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


@dataclass
class RedisServer:
    """A private ``redis-server`` (no persistence) on a free port. ``url`` is its ``redis://`` URL; ``args`` are
    more ``redis-server`` options (``CACHE_ARGS`` makes it a score cache: bounded, evicting least recently used)."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    workdir: str | None = None
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install "
                               "redis-server; macOS: brew install redis) or point RERANKQ_REDIS_URL at a Redis")
        self.workdir = tempfile.mkdtemp(prefix="rerankq-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--loglevel", "warning", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(self.port, 10, "redis-server", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5.0)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


CACHE_ARGS = ("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")


@dataclass
class S3Server:
    """moto's S3 server in a thread of this process, on a free port; speaks real S3 over HTTP.

    Sets dummy AWS credentials in the environment if none are set (moto accepts any).
    """

    port: int = field(default_factory=free_port)
    _server: object | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        from moto.server import ThreadedMotoServer

        for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            os.environ.setdefault(key, value)
        # werkzeug logs every request at INFO to stderr when nobody configured its logger: keep it to warnings
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server
        wait_for_port(self.port, 10, "S3 endpoint")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def default_tiny_model_dir() -> Path:
    """Where the embedded default keeps its tiny checkpoint (built on first use)."""
    return Path.home() / ".cache" / "rerankq" / "tiny-model"


def metric_values(url: str, wanted: set[str] | None = None) -> dict[str, float]:
    """A worker's /metrics as {sample name: value}, summed over label sets (``model``, ``state``, ...)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if wanted is None or sample.name in wanted:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out
