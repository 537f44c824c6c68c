"""The private S3 server does not flood the terminal: no request log lines on stderr (a bench or demo run
used to print one per S3 request)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
from rerankq.cli.cluster import S3Server
with S3Server() as server:
    client = server.client()
    client.create_bucket(Bucket="quiet")
    for i in range(5):
        client.put_object(Bucket="quiet", Key=f"k{i}", Body=b"x")
    client.list_objects_v2(Bucket="quiet")
print("done")
"""


def test_s3_server_prints_no_request_logs() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "done"
    assert "HTTP/1.1" not in out.stderr and out.stderr.strip() == ""
