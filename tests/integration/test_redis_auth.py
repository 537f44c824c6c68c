"""A Redis that requires a password, reached without one (or with a wrong one): the worker, the CLI and the
gateway say that authentication failed and where the password goes (``RERANKQ_REDIS_URL``), never "cannot
reach". Real redis-server started with ``--requirepass``, the real ``rerankq`` command."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerankq.cli.cluster import RedisServer, stop_process
from tests.integration.conftest import start_gateway
from tests.integration.test_cli_errors import rerankq


@pytest.fixture(scope="module")
def locked() -> Iterator[RedisServer]:
    with RedisServer(args=("--requirepass", "s3cret")) as server:
        yield server


def env_for(url: str) -> dict[str, str]:
    return {"RERANKQ_REDIS_URL": url, "RERANKQ_REDIS_RETRY_S": "0"}


@pytest.mark.parametrize("command", [["status", "some-id"], ["worker", "--model", "fake:hash", "--device", "cpu"]])
def test_no_password_names_the_setting(locked: RedisServer, command: list[str]) -> None:
    out = rerankq(*command, env=env_for(locked.url))
    line = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 4, out.stderr
    assert line.startswith(f"Redis at {locked.url} refused authentication: RERANKQ_REDIS_URL has no password"), line
    assert "redis://:PASSWORD@host:port/db" in line and "cannot reach" not in out.stderr


def test_a_wrong_password_is_refused_and_hidden(locked: RedisServer) -> None:
    out = rerankq("status", "some-id", env=env_for(locked.url.replace("redis://", "redis://:wrong@")))
    assert out.returncode == 4
    assert out.stderr.startswith(f"Redis at redis://:***@127.0.0.1:{locked.port}/0 refused authentication: the "
                                 "password in RERANKQ_REDIS_URL was refused"), out.stderr
    assert "wrong" not in out.stderr


def test_the_gateway_says_so_when_asked(locked: RedisServer, tmp_path: Path) -> None:
    gateway = start_gateway({**os.environ, **env_for(locked.url)}, tmp_path)
    try:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{gateway.url}/readyz", timeout=10)
        assert answer.value.code == 503
        message = json.loads(answer.value.read())["message"]
        assert "refused authentication" in message and "RERANKQ_REDIS_URL" in message, message
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"{gateway.url}/v1/jobs/some-id", timeout=10)
        assert answer.value.code == 503 and "refused authentication" in json.loads(answer.value.read())["message"]
    finally:
        stop_process(gateway.proc)
    assert "refused authentication: RERANKQ_REDIS_URL has no password" in gateway.tail()
