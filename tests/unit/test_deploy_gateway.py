"""The gateway's deployment files agree with the code: compose service, k8s Deployment + Service + HPA."""

from __future__ import annotations

import os
import re

import pytest

from rerankq.client.gateway.app import OPEN_PATHS
from rerankq.settings import Settings
from tests.unit.test_deploy_configs import container, env_example, env_of, interpolate, k8s, services


def _clear_rerankq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("RERANKQ_"):
            monkeypatch.delenv(var)


def test_compose_gateway_needs_keys_and_shares_the_workers_redis_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, example = services()["gateway"], env_example()
    assert gateway["command"] == ["rerankq", "gateway", "--host", "0.0.0.0", "--port", "8000"]
    assert gateway["environment"]["RERANKQ_API_KEYS"].startswith("${RERANKQ_API_KEYS:?")
    _clear_rerankq_env(monkeypatch)
    for var, value in gateway["environment"].items():
        monkeypatch.setenv(var, interpolate(str(value), example))
    settings = Settings()
    worker = services()["worker-gpu0"]["environment"]
    assert settings.redis_url == interpolate(worker["RERANKQ_REDIS_URL"], example)
    assert settings.model == interpolate(worker["RERANKQ_MODEL"], example)  # the same default model
    assert settings.api_keys == [example["RERANKQ_API_KEYS"]]
    bucket = settings.gateway.uploads_uri.removeprefix("s3://").split("/")[0]
    script = " ".join(services()["minio-init"]["command"])
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert f"mc ilm rule add --expire-days 7 local/{bucket}" in script  # how long uploads live
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"]) and "/readyz" in OPEN_PATHS


def test_k8s_gateway_deployment_service_and_cpu_autoscaler(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = container("Deployment", "rerankq-gateway")
    assert gateway["args"][:2] == ["rerankq", "gateway"] and "0.0.0.0" in gateway["args"]
    env = env_of(gateway)
    assert env["RERANKQ_API_KEYS"] == {"secretKeyRef": {"name": "rerankq-secrets", "key": "gateway-api-keys"}}
    (secret,) = k8s("Secret", "rerankq-secrets")
    assert "gateway-api-keys" in secret["stringData"]
    assert {gateway["readinessProbe"]["httpGet"]["path"], gateway["livenessProbe"]["httpGet"]["path"]} <= set(
        OPEN_PATHS)  # probes cannot send a key
    (service,) = k8s("Service", "rerankq-gateway")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "rerankq-gateway"}
    (hpa,) = k8s("HorizontalPodAutoscaler", "rerankq-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rerankq-gateway"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (configmap,) = k8s("ConfigMap", "rerankq-config")
    _clear_rerankq_env(monkeypatch)
    resolved = dict(configmap["data"])
    for var, value in env.items():
        resolved[var] = "hex0123" if isinstance(value, dict) else re.sub(
            r"\$\((\w+)\)", lambda m: resolved[m.group(1)], value)
    for var, value in resolved.items():
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.redis_url == "redis://:hex0123@redis:6379/0" and settings.api_keys == ["hex0123"]
    assert settings.gateway.uploads_uri.startswith("s3://uploads/")
