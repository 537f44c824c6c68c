"""Batch input lines → jobs or errors (``rerankq.client.batches.lines``), and the duration parser of the CLI."""

from __future__ import annotations

import json
import time

import pytest

from rerankq.client.batches.cli import duration
from rerankq.client.batches.lines import parse_line
from rerankq.settings import Settings

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]
DEFAULTS = {"job_id": "b-7", "priority": "low", "model": None, "expires_at": None}


def parse(line: object, **defaults: object) -> object:
    raw = line if isinstance(line, bytes) else json.dumps(line).encode()
    return parse_line(raw, 7, SETTINGS, {**DEFAULTS, **defaults})


def test_a_readme_job_with_a_custom_id() -> None:
    line = parse({"custom_id": 42, "query": "q", "documents": ["a", {"text": "b"}], "priority": "high"})
    assert line.number == 7 and line.custom_id == "42" and line.error is None
    assert line.job["job_id"] == "b-7" and line.job["priority"] == "low"  # the batch's id and priority
    assert line.job["documents"] == [{"text": "a"}, {"text": "b"}]


def test_an_openai_line_with_a_cohere_body() -> None:
    line = parse({"custom_id": "x", "method": "POST", "url": "/v1/rerank",
                  "body": {"query": "q", "documents": ["a", "b"], "top_n": 1, "return_documents": False}})
    assert line.error is None and line.job["top_n"] == 1 and line.job["query"] == {"text": "q"}


@pytest.mark.parametrize(("raw", "message"), [
    (b"{nope", "not JSON"),
    (b"[1, 2]", "a line is a JSON object, got a JSON list"),
    ({"query": "q", "documents": ["a"], "job_id": "mine"}, "job_id"),
    ({"query": "q"}, "documents"),
    ({"url": "/v1/embed", "body": {}}, "url"),
    ({"method": "GET", "url": "/v1/rerank", "body": {}}, "method"),
    ({"url": "/v1/rerank", "body": {"query": "q", "documents": [{"image": "data:image/png;base64,AA=="}]}},
     "data: URIs"),
])
def test_bad_lines_name_the_problem(raw: object, message: str) -> None:
    line = parse(raw)
    assert line.job is None and message in line.error


def test_the_completion_window_caps_the_lines_own_deadline() -> None:
    window = time.time() + 3600
    assert parse({"query": "q", "documents": ["a"]}, expires_at=window).job["expires_at"] == window
    own = parse({"query": "q", "documents": ["a"], "deadline_s": 60}, expires_at=window).job
    assert own["expires_at"] < window and "deadline_s" not in own


def test_durations() -> None:
    assert [duration(t) for t in ("90", "90s", "30m", "24h", "2d", "1.5h")] == [90, 90, 1800, 86400, 172800, 5400]
