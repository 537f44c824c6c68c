"""Settings: the public top-level names work as written; sections; docs/CONFIG.md is generated from the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from rerankq.configdoc import markdown, type_and_unit
from rerankq.settings import CacheSettings, Settings

CONFIG = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_spec_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "RERANKQ_REDIS_URL": "rediss://:secret@redis.example:6380/2",
        "RERANKQ_S3_ENDPOINT_URL": "http://minio:9000",
        "RERANKQ_MODEL": "random:8b",
        "RERANKQ_DEVICE": "cuda:1",
        "RERANKQ_METRICS_PORT": "9100",
        "RERANKQ_ALLOW_FILE_URLS": "true",
        "RERANKQ_HTTP_ALLOWED_HOSTS": "images.example.com, CDN.example.org",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert (s.redis_url, s.s3_endpoint_url, s.model, s.device) == (
        "rediss://:secret@redis.example:6380/2", "http://minio:9000", "random:8b", "cuda:1")
    assert s.metrics_port == 9100 and s.allow_file_urls is True
    assert s.http_allowed_hosts == ["images.example.com", "cdn.example.org"]


def test_sections_use_a_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKQ_BATCH__MAX_TOKENS", "65536")
    monkeypatch.setenv("RERANKQ_LIMITS__MAX_DOCUMENTS", "7")
    s = Settings()
    assert s.batch.max_tokens == 65536 and s.limits.max_documents == 7
    assert s.batch.max_pairs == 64  # untouched defaults stay


def test_bad_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKQ_REDIS_URL", "http://nope")
    with pytest.raises(ValidationError, match="RERANKQ_REDIS_URL must start with"):
        Settings()


def test_config_page_is_generated_from_the_code() -> None:
    assert CONFIG.read_text() == markdown(), "docs/CONFIG.md is out of date: run `python -m rerankq.configdoc --write`"


def knobs(model: type[BaseModel], prefix: str = "RERANKQ_") -> list[str]:
    """Every setting's environment name, sections walked."""
    out = []
    for name, info in model.model_fields.items():
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            out += knobs(section, f"{prefix}{name.upper()}__")
        else:
            out.append(f"{prefix}{name.upper()}")
    return out


def test_config_page_has_one_row_per_knob() -> None:
    page = markdown()
    names = knobs(Settings)
    assert {"RERANKQ_REDIS_URL", "RERANKQ_BATCH__MAX_TOKENS", "RERANKQ_CALLBACKS__SECRET"} <= set(names)
    assert [n for n in names if page.count(f"| `{n}` |") != 1] == []
    assert page.count("| `RERANKQ_") == len(names)


def test_types_say_their_unit_and_bounds() -> None:
    assert type_and_unit("lease_s", Settings.model_fields["lease_s"]) == "int ≥ 2, seconds"
    assert type_and_unit("timeout_s", CacheSettings.model_fields["timeout_s"]) == "float > 0, seconds"
    assert type_and_unit("metrics_port", Settings.model_fields["metrics_port"]) == "int ≥ 0 and ≤ 65535"
    assert type_and_unit("s3_endpoint_url", Settings.model_fields["s3_endpoint_url"]) == "string, optional"
    assert type_and_unit("visibility_timeout_s", Settings.model_fields["visibility_timeout_s"]) == (
        "int ≥ 2, optional, seconds")
