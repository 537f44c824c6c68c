"""``rerankq demo --serve``: the embedded default stays up behind the gateway until Ctrl-C, then stops all of it."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from rerankq.cli.cluster import free_port
from tests.integration.test_demo import demo_env, finish, no_process_left, redis_port

pytestmark = pytest.mark.slow


def test_serve_keeps_the_cluster_and_console_up_until_ctrl_c() -> None:
    tag, port = uuid.uuid4().hex, free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rerankq.cli", "demo", "--serve", "--port", str(port)],
                            env=demo_env(tag), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("serving until Ctrl-C") or proc.poll() is not None:
            break
    out = "".join(lines)
    assert f"console: http://127.0.0.1:{port}/" in out, out
    url = f"http://127.0.0.1:{port}"
    assert "rerankq console" in httpx.get(url + "/", timeout=10).text
    ranked = httpx.post(url + "/v2/rerank", json={"query": "a red circle", "documents": ["red", "blue"]},
                        timeout=60).json()
    assert sorted(r["index"] for r in ranked["results"]) == [0, 1]
    view = httpx.get(url + "/v1/queue", timeout=10).json()
    assert len(view["workers"]) == 1 and len(view["recent"]) == 1  # the sample jobs went through the SDK
    proc.send_signal(signal.SIGINT)
    out += finish(proc)
    assert proc.returncode == 130, out
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=5)
    assert no_process_left(tag, redis_port(out)) == []
