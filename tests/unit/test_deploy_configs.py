"""The deployment files (docker-compose.yml, infra/) agree with the code and with each other.

No Docker engine or cluster runs here, so this is what CI can check: every file parses; the compose file
validates against the Compose Specification schema; Kubernetes manifests validate against the Kubernetes
OpenAPI schemas that ship inside ``kubernetes-validate``; yamllint passes; and the properties that matter
in production hold, with names taken from the code (queue names from ``rerankq.keys``, settings from
``rerankq.settings``, metric names from the worker's metrics module).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from rerankq import keys
from rerankq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
DASHBOARD = INFRA / "grafana" / "dashboards" / "rerankq.json"
YAML_FILES = sorted([COMPOSE, *INFRA.rglob("*.yml"), *INFRA.rglob("*.yaml")])
# Custom resources: no schema in kubernetes-validate; their fields are checked by the tests below.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "Kustomization"}
# Metrics of the queue-length exporter that docker-compose.yml and infra/k8s/redis.yaml deploy.
EXPORTER_METRICS = {"redis_key_size"}
# The metrics the dashboard is built on (docs/DEPLOYMENT.md, Prometheus and Grafana); every worker must export them.
CORE_METRICS = {"rerankq_pairs_scored_total": "counter", "rerankq_jobs_total": "counter",
                "rerankq_batch_pairs": "histogram", "rerankq_batch_jobs": "histogram",
                "rerankq_batch_padding_ratio": "histogram", "rerankq_queue_wait_seconds": "histogram",
                "rerankq_scoring_seconds": "histogram", "rerankq_media_fetch_seconds": "histogram"}


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@cache
def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc]


def k8s(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def services() -> dict[str, Any]:
    return compose()["services"]


def worker_services() -> dict[str, Any]:
    return {name: svc for name, svc in services().items() if name.startswith("worker-")}


def gpu_workers() -> dict[str, Any]:
    return {name: svc for name, svc in worker_services().items() if name.startswith("worker-gpu")}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """A Kubernetes container's env as name -> value or valueFrom."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def container(kind: str, name: str) -> dict[str, Any]:
    (doc,) = k8s(kind, name)
    return doc["spec"]["template"]["spec"]["containers"][0]


def worker_metrics() -> dict[str, str]:
    """Metric name -> type, as the worker exports them (``rerankq.worker.metrics``, else ``CORE_METRICS``)."""
    try:
        from rerankq.worker.metrics import ListLengths, Metrics
    except ImportError:
        return dict(CORE_METRICS)

    class NoRedis:  # the queue-length collector reports its family even when Redis is unreachable
        def pipeline(self, transaction: bool = False) -> None:
            raise ConnectionError("no redis in a unit test")

    families = [*Metrics().registry.collect(), *ListLengths(NoRedis(), [], "dlq").collect()]
    return {f.name + ("_total" if f.type == "counter" else ""): f.type for f in families}


def flower_metrics() -> dict[str, str]:
    """Metric name -> type, as Flower exports them on /metrics (scraped by Prometheus, see prometheus.yml)."""
    from flower.events import get_prometheus_metrics
    from prometheus_client.metrics import MetricWrapperBase

    found: dict[str, str] = {}
    for metric in vars(get_prometheus_metrics()).values():
        if isinstance(metric, MetricWrapperBase):
            kind = str(metric._type)  # type: ignore[attr-defined]
            found[metric._name + ("_total" if kind == "counter" else "")] = kind  # type: ignore[attr-defined]
    return found


# --- linters ------------------------------------------------------------------------------------------


def test_every_config_file_parses() -> None:
    assert COMPOSE in YAML_FILES and len(YAML_FILES) >= 10
    for path in YAML_FILES:
        assert list(yaml.safe_load_all(path.read_text())), f"{path} is empty"
    for path in INFRA.rglob("*.json"):
        json.loads(path.read_text())


def test_yamllint_passes() -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
                            "truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}")
    problems = [f"{path.relative_to(ROOT)}:{p.line}: {p.desc}" for path in YAML_FILES
                for p in linter.run(path.read_text(), config, str(path))]
    assert problems == []


def test_compose_file_validates_against_the_compose_spec() -> None:
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    # The schema ships inside check-jsonschema (vendor.compose-spec): no network needed.
    run = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_compose_config_when_docker_compose_is_available() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here; the Compose Spec schema check covers it")
    example = env_example()
    run = subprocess.run([docker, "compose", "-f", str(COMPOSE), "--profile", "gpu1", "--profile", "cpu",
                          "config", "-q"], capture_output=True, text=True, env={**os.environ, **example}, timeout=60)
    assert run.returncode == 0, run.stderr


def test_kubernetes_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate

    kinds = set()
    for path, doc in k8s_docs():
        kinds.add(doc["kind"])
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {err.message}")
    assert {"Namespace", "Secret", "Deployment", "StatefulSet", "Service", "ScaledObject",
            "TriggerAuthentication", "ServiceMonitor"} <= kinds


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = k8s("Kustomization")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


# --- docker compose -----------------------------------------------------------------------------------


def test_compose_has_the_whole_stack() -> None:
    assert {"redis", "minio", "minio-init", "worker-gpu0", "flower", "redis-exporter", "prometheus",
            "grafana"} <= set(services())


def test_compose_redis_persists_with_aof_and_a_password_and_never_evicts() -> None:
    command = services()["redis"]["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=False))
    assert flags["--appendonly"] == "yes"
    assert flags["--requirepass"].startswith("${REDIS_PASSWORD:?")
    assert flags["--maxmemory-policy"] == "noeviction"  # an evicted key is a lost job
    assert any(v.endswith(":/data") for v in services()["redis"]["volumes"])


def test_every_compose_variable_that_must_be_set_is_in_env_example() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH"} <= required <= example


def test_compose_gpu_workers_reserve_one_distinct_nvidia_gpu_each() -> None:
    device_ids = []
    for name, svc in gpu_workers().items():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        assert len(device["device_ids"]) == 1, f"{name}: one GPU per worker"
        device_ids += device["device_ids"]
        assert svc["command"][:2] == ["rerankq", "worker"] and "cuda:0" in svc["command"], name
        assert svc["environment"]["RERANKQ_DEVICE"] == "cuda:0"
        assert any(v.endswith(":/models") for v in svc["volumes"]), f"{name}: model cache volume"
    assert len(device_ids) == len(set(device_ids)) >= 1


def _check_settings_env(name: str, where: str) -> None:
    """``name`` is a RERANKQ_* variable that rerankq.settings actually reads."""
    fields = Settings.model_fields
    rest = name.removeprefix("RERANKQ_").lower()
    section, _, knob = rest.partition("__")
    assert section in fields, f"{where}: {name} is not a setting (rerankq/settings.py)"
    if knob:
        annotation = fields[section].annotation
        assert knob in annotation.model_fields, f"{where}: {name}: {section} has no knob {knob!r}"  # type: ignore


def test_every_rerankq_variable_in_the_deployment_files_is_a_real_setting() -> None:
    names = set(re.findall(r"\bRERANKQ_[A-Z0-9_]+\b", COMPOSE.read_text()))
    for path in [*K8S.glob("*.yaml"), INFRA / "Dockerfile.worker"]:
        names |= set(re.findall(r"\bRERANKQ_[A-Z0-9_]+\b", path.read_text()))
    names -= {"RERANKQ_BIND"}  # compose-only: the host address ports are published on
    assert {"RERANKQ_REDIS_URL", "RERANKQ_S3_ENDPOINT_URL", "RERANKQ_MODEL", "RERANKQ_DEVICE",
            "RERANKQ_METRICS_PORT"} <= names
    for name in sorted(names):
        _check_settings_env(name, "deployment files")


def test_compose_workers_get_the_spec_settings_right() -> None:
    for name, svc in worker_services().items():
        env = svc["environment"]
        settings = Settings(redis_url=env["RERANKQ_REDIS_URL"], s3_endpoint_url=env["RERANKQ_S3_ENDPOINT_URL"],
                            metrics_port=int(env["RERANKQ_METRICS_PORT"]))
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/0", settings.redis_url), name
        assert settings.s3_endpoint_url == "http://minio:9000"
        assert settings.metrics_port > 0, f"{name}: metrics off"
        assert env["RERANKQ_MODEL"]
        assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert op != ":?", f"{name} must be set: {arg}"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value).replace("$$", "$")


def test_compose_workers_settings_load_from_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    example = env_example()
    for name, svc in worker_services().items():
        for var in list(os.environ):
            if var.startswith("RERANKQ_"):
                monkeypatch.delenv(var)
        for var, value in svc["environment"].items():
            monkeypatch.setenv(var, interpolate(str(value), example))
        settings = Settings()  # exactly what the worker process reads
        assert settings.redis_url == f"redis://:{example['REDIS_PASSWORD']}@redis:6379/0", name
        assert settings.s3_endpoint_url == "http://minio:9000"
        assert settings.model == ("/models/tiny" if name == "worker-cpu" else example["RERANKQ_MODEL"])
        assert settings.device == ("cpu" if name == "worker-cpu" else "cuda:0")
        assert settings.metrics_port == 9400 and settings.http_allowed_hosts == []
        assert settings.batch.max_tokens == int(example["RERANKQ_BATCH__MAX_TOKENS"])
        assert settings.scoring.model_cache_dir.startswith("/models/")
        assert os.environ["AWS_ACCESS_KEY_ID"] == example["MINIO_ROOT_USER"]


def test_k8s_worker_settings_load_from_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    (configmap,) = k8s("ConfigMap", "rerankq-config")
    worker = container("Deployment", "rerankq-worker")
    assert worker["envFrom"] == [{"configMapRef": {"name": "rerankq-config"}}]
    for var in list(os.environ):
        if var.startswith("RERANKQ_"):
            monkeypatch.delenv(var)
    resolved = dict(configmap["data"])
    for var, value in env_of(worker).items():  # in order, like the kubelet: $(VAR) sees earlier entries
        resolved[var] = "hex0123" if isinstance(value, dict) else re.sub(
            r"\$\((\w+)\)", lambda m: resolved[m.group(1)], value)
    for var, value in resolved.items():
        monkeypatch.setenv(var, value)
    settings = Settings()
    assert settings.redis_url == "redis://:hex0123@redis:6379/0"
    assert settings.device == "cuda:0" and settings.metrics_port == 9400
    assert settings.results.bucket_uri == "s3://results/rerankq/"


def test_minio_init_creates_the_buckets_the_workers_write_to() -> None:
    script = " ".join(services()["minio-init"]["command"])
    buckets = set(re.findall(r"mc mb --ignore-existing local/([\w.-]+)", script))
    assert {"media", "results"} <= buckets
    for svc in worker_services().values():
        uri = svc["environment"]["RERANKQ_RESULTS__BUCKET_URI"]
        assert uri.removeprefix("s3://").split("/")[0] in buckets


def test_compose_flower_requires_a_login_and_watches_the_broker() -> None:
    flower = services()["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert flower["environment"]["RERANKQ_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD")
    command = flower["command"]
    assert command[:2] == ["rerankq", "flower"]
    # the address is explicit (every interface of the container; the published port is bound to RERANKQ_BIND)
    assert command[command.index("--address") + 1] == "0.0.0.0"
    assert command[command.index("--db") + 1].startswith("/var/lib/flower/")
    assert any(v.startswith("flower-data:/var/lib/flower") for v in flower["volumes"])


def test_prometheus_scrapes_every_worker_on_its_metrics_port_and_the_queue_exporter() -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (sd,) = jobs["rerankq-worker"]["dns_sd_configs"]
    assert set(worker_services()) <= set(sd["names"])
    ports = {int(svc["environment"]["RERANKQ_METRICS_PORT"]) for svc in worker_services().values()}
    assert ports == {sd["port"]}
    targets = {t for job in jobs.values() for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert "redis-exporter:9121" in targets and "flower:5555" in targets


def test_queue_exporter_watches_every_priority_queue() -> None:
    expected = {f"db0={q}" for q in keys.queue_names(Settings())}
    compose_keys = services()["redis-exporter"]["environment"]["REDIS_EXPORTER_CHECK_SINGLE_KEYS"]
    assert set(compose_keys.split(",")) == expected
    (redis_set,) = k8s("StatefulSet", "redis")
    exporter = next(c for c in redis_set["spec"]["template"]["spec"]["containers"] if c["name"] == "redis-exporter")
    assert set(env_of(exporter)["REDIS_EXPORTER_CHECK_SINGLE_KEYS"].split(",")) == expected


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    prov = INFRA / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "rerankq.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in services()["grafana"]["volumes"])
    assert mounts["./infra/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./infra/grafana/provisioning"] == "/etc/grafana/provisioning"


# --- Grafana dashboard ----------------------------------------------------------------------------------

PROMQL_WORDS = {"sum", "rate", "irate", "increase", "by", "without", "max", "min", "avg", "count",
                "histogram_quantile", "and", "or", "unless", "on", "ignoring", "group_left", "group_right",
                "clamp_min", "topk", "bottomk", "offset", "bool", "e"}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (labels, ranges, strings and functions removed)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


def test_metric_name_extraction_reads_promql_as_prometheus_does() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, instance) (rate(rerankq_x_bucket{key=~"a\\\\.b"}[5m]))) / up'
    assert metric_names(expr) == {"rerankq_x_bucket", "up"}


def test_the_worker_exports_every_core_metric() -> None:
    exported = worker_metrics()
    for name, kind in CORE_METRICS.items():
        assert exported.get(name) == kind, f"{name}: the dashboard needs a {kind}"


def test_dashboard_queries_only_metrics_that_are_exported() -> None:
    exported = worker_metrics() | flower_metrics()
    allowed = set(EXPORTER_METRICS)
    for name, kind in exported.items():
        allowed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert used - allowed == set(), f"dashboard queries metrics nobody exports; exported: {sorted(allowed)}"
    # every core metric the workers export is on the dashboard
    for name in CORE_METRICS:
        assert any(u == name or u.startswith(name + "_") for u in used), f"{name} is not on the dashboard"


def test_dashboard_shows_throughput_batch_fill_padding_queue_depth_and_latency() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("pairs / s", "pairs per batch", "jobs per forward pass", "padding", "queue depth", "latency"):
        assert topic in titles, topic
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
    queue_exprs = [e for e in dashboard_exprs() if "redis_key_size" in e]
    assert queue_exprs and all("(high|normal|low)" in e for e in queue_exprs)
    assert set(keys.PRIORITIES) == {"high", "normal", "low"}


# --- Kubernetes ---------------------------------------------------------------------------------------


def test_k8s_worker_requests_one_gpu_and_probes_its_metrics_port() -> None:
    worker = container("Deployment", "rerankq-worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][:2] == ["rerankq", "worker"]
    (configmap,) = k8s("ConfigMap", "rerankq-config")
    port = int(configmap["data"]["RERANKQ_METRICS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        target = worker[probe]["httpGet"]["port"]
        assert ports.get(target, target) == port, probe
    for name in configmap["data"]:
        if name.startswith("RERANKQ_"):
            _check_settings_env(name, "configmap.yaml")


def test_k8s_worker_builds_its_redis_url_from_the_secret() -> None:
    env = env_of(container("Deployment", "rerankq-worker"))
    names = [e["name"] for e in container("Deployment", "rerankq-worker")["env"]]
    assert env["REDIS_PASSWORD"]["secretKeyRef"] == {"name": "rerankq-secrets", "key": "redis-password"}
    # Kubernetes only expands $(VAR) defined earlier in the list.
    assert names.index("REDIS_PASSWORD") < names.index("RERANKQ_REDIS_URL")
    assert Settings(redis_url=env["RERANKQ_REDIS_URL"]).redis_url == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    (secret,) = k8s("Secret", "rerankq-secrets")
    refs = [v["secretKeyRef"]["key"] for v in env.values() if isinstance(v, dict) and "secretKeyRef" in v]
    assert set(refs) <= set(secret["stringData"])


def test_k8s_redis_is_persistent_with_aof_and_a_password() -> None:
    (redis_set,) = k8s("StatefulSet", "redis")
    redis = redis_set["spec"]["template"]["spec"]["containers"][0]
    flags = dict(zip(redis["args"][::2], redis["args"][1::2], strict=False))
    assert flags["--appendonly"] == "yes" and flags["--maxmemory-policy"] == "noeviction"
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"
    assert env_of(redis)["REDIS_PASSWORD"]["secretKeyRef"]["key"] == "redis-password"
    (claim,) = redis_set["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": flags["--dir"]} in redis["volumeMounts"]


def test_keda_scales_workers_on_every_priority_queue() -> None:
    (scaled,) = k8s("ScaledObject")
    (deployment,) = k8s("Deployment", "rerankq-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    triggers = scaled["spec"]["triggers"]
    assert all(t["type"] == "redis" for t in triggers)
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(keys.queue_names(Settings()))
    (service,) = k8s("Service", "redis")
    for trigger in triggers:
        assert trigger["metadata"]["address"] == f"redis.{service['metadata']['namespace']}.svc.cluster.local:6379"
        assert trigger["metadata"]["databaseIndex"] == "0"  # the /0 of RERANKQ_REDIS_URL
    # The formula adds up every queue, so waiting work in any queue counts.
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    assert set(re.findall(r"\w+", formula)) == {t["name"] for t in triggers}
    assert "+" in formula


def test_keda_reads_the_redis_password_from_the_secret() -> None:
    (scaled,) = k8s("ScaledObject")
    (auth,) = k8s("TriggerAuthentication")
    (secret,) = k8s("Secret", "rerankq-secrets")
    assert {t["authenticationRef"]["name"] for t in scaled["spec"]["triggers"]} == {auth["metadata"]["name"]}
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "password" and ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_k8s_flower_has_a_login_and_a_service() -> None:
    env = env_of(container("Deployment", "flower"))
    assert env["FLOWER_BASIC_AUTH"]["secretKeyRef"] == {"name": "rerankq-secrets", "key": "flower-basic-auth"}
    assert env["RERANKQ_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
    args = container("Deployment", "flower")["args"]
    assert args[:2] == ["rerankq", "flower"] and args[args.index("--address") + 1] == "0.0.0.0"
    (service,) = k8s("Service", "flower")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "flower"}


def test_prometheus_finds_k8s_workers_by_service_monitor_and_annotations() -> None:
    (monitor,) = k8s("ServiceMonitor", "rerankq-worker")
    (service,) = k8s("Service", "rerankq-worker-metrics")
    (deployment,) = k8s("Deployment", "rerankq-worker")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    (configmap,) = k8s("ConfigMap", "rerankq-config")
    assert annotations["prometheus.io/port"] == configmap["data"]["RERANKQ_METRICS_PORT"]


# --- Dockerfiles --------------------------------------------------------------------------------------


def test_worker_image_is_cuda_torch_non_root_with_a_model_cache_volume() -> None:
    text = (INFRA / "Dockerfile.worker").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:\S+-cuda\S+$", text, re.M)
    assert "'.[worker,quant]'" in text  # RERANKQ_QUANTIZATION works in the image
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert 'VOLUME ["/models"]' in text and "HF_HOME=/models/" in text
    assert "HEALTHCHECK" in text and "RERANKQ_METRICS_PORT" in text
    for svc in worker_services().values():
        assert svc["build"]["dockerfile"] == "infra/Dockerfile.worker"
