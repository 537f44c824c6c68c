"""Settings: SPEC §5 names work as written; sections; the README's table is the code's."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rerankq.settings import Settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


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


def test_readme_table_is_generated_from_the_code() -> None:
    text = README.read_text()
    start, end = "<!-- settings:start -->\n", "\n<!-- settings:end -->"
    table = text[text.index(start) + len(start):text.index(end)]
    assert table == settings_table(), "README out of date: run `python -m rerankq.settings` and paste the table"
