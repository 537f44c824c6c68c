"""The score cache's deployment files agree with the code: a Redis of its own, bounded, evicting least recently
used scores, never persisted; every worker points at it; the broker's Redis never evicts."""

from __future__ import annotations

import os

import pytest

from rerankq.settings import Settings
from tests.unit.test_deploy_configs import container, env_example, env_of, interpolate, k8s, services, worker_services


def _flags(args: list[str]) -> dict[str, str]:
    return dict(zip(args[::2], args[1::2], strict=False))


def test_compose_cache_is_a_bounded_lru_redis_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = services()["redis-cache"]
    assert cache["command"][0] == "redis-server"
    flags = _flags(cache["command"][1:])
    assert flags["--maxmemory-policy"] == "allkeys-lru" and flags["--maxmemory"].startswith("${CACHE_MAXMEMORY")
    assert flags["--appendonly"] == "no" and flags["--save"] == "" and "volumes" not in cache
    assert flags["--requirepass"].startswith("${REDIS_PASSWORD:?")
    assert _flags(services()["redis"]["command"][1:])["--maxmemory-policy"] == "noeviction"
    example = env_example()
    assert "CACHE_MAXMEMORY" in example
    for name, svc in worker_services().items():
        for var in list(os.environ):
            if var.startswith("RERANKQ_"):
                monkeypatch.delenv(var)
        for var, value in svc["environment"].items():
            monkeypatch.setenv(var, interpolate(str(value), example))
        settings = Settings()
        assert settings.cache.active, name
        assert settings.cache.redis_url == f"redis://:{example['REDIS_PASSWORD']}@redis-cache:6379/0"
        assert "redis-cache" not in svc.get("depends_on", {}), f"{name}: workers score without the cache"


def test_k8s_cache_is_a_bounded_lru_redis_and_every_worker_uses_it() -> None:
    redis = container("Deployment", "redis-cache")
    flags = _flags(redis["args"])
    assert flags["--maxmemory-policy"] == "allkeys-lru" and flags["--appendonly"] == "no"
    assert env_of(redis)["REDIS_PASSWORD"]["secretKeyRef"]["key"] == "redis-password"
    (service,) = k8s("Service", "redis-cache")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "redis-cache"}
    env = env_of(container("Deployment", "rerankq-worker"))
    names = list(env)
    assert names.index("REDIS_PASSWORD") < names.index("RERANKQ_CACHE__REDIS_URL")
    assert env["RERANKQ_CACHE__REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@redis-cache:6379/0"
    assert Settings(cache={"redis_url": env["RERANKQ_CACHE__REDIS_URL"]}).cache.active
