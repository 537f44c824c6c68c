"""Shared fixtures: the tiny checkpoint, a private redis-server, moto's S3 server over HTTP.

Markers follow the folder: tests/unit → unit, tests/integration → integration, tests/gpu → gpu.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rerankq.cli.cluster import RedisServer, S3Server

ROOT = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker in ("unit", "integration", "gpu"):
            if f"{os.sep}{marker}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen3-VL-Reranker checkpoint, written once per test session."""
    from rerankq.models.qwen3vl.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen3-VL-Embedding checkpoint, written once per test session."""
    from rerankq.models.qwen3vl_embed.tiny import write_tiny_embedding_model

    return write_tiny_embedding_model(tmp_path_factory.mktemp("tiny-embed"))


@pytest.fixture(scope="session")
def tiny_scorer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny checkpoint loaded through the same path as a real one (fp32, CPU)."""
    from rerankq.models.loading import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server on a free port for the whole session (flush per test with ``redis_url``)."""
    with RedisServer() as server:
        yield server


@pytest.fixture()
def redis_url(redis_server: RedisServer) -> str:
    """The private Redis, flushed before the test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server over HTTP on a free port, for the whole session."""
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def s3(s3_server: S3Server):  # type: ignore[no-untyped-def]
    """A boto3 S3 client on the private endpoint."""
    return s3_server.client()
