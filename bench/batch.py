"""``python -m bench.batch``: what batches cost, measured in one run on a private cluster.

1. *throughput*: the same ``--jobs`` jobs, once with ``submit_many`` + ``as_completed`` and once as a JSONL batch
   (``submit_batch`` + ``wait_batch``, outputs written to S3); prints jobs/s of each and their ratio;
2. *submitter memory*: the peak RSS of a process that submits a ``--lines``-line local file as a batch (the file
   is streamed up), next to one that submits a 1,000-line file: the size of the input should not matter.

Starts redis-server, moto's S3 server and one worker (``--model``, default ``fake:hash``). Figures are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.throughput import _start_cluster

BUCKET = "batch-bench"
_SUBMITTER = """
import resource, sys
from rerankq.client.client import RerankClient
client = RerankClient(redis_url=sys.argv[1], s3_endpoint_url=sys.argv[2])
record = client.submit_batch(sys.argv[3], "s3://{bucket}/" + sys.argv[4] + "/", batch_id=sys.argv[4])
client.cancel_batch(record.batch_id)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _job(i: int, docs: int) -> dict[str, Any]:
    return {"query": {"text": f"query {i} about a red backpack"},
            "documents": [{"text": f"document {d} of job {i}"} for d in range(docs)]}


def throughput(client: Any, s3: Any, jobs: int, docs: int) -> dict[str, float]:
    requests = [_job(i, docs) for i in range(jobs)]
    t0 = time.perf_counter()
    ids = client.submit_many(requests)
    for _ in client.as_completed(ids):
        pass
    sdk_s = time.perf_counter() - t0
    body = "".join(json.dumps({"custom_id": str(i), **r}) + "\n" for i, r in enumerate(requests))
    s3.put_object(Bucket=BUCKET, Key="in/throughput.jsonl", Body=body.encode())
    t0 = time.perf_counter()
    client.submit_batch(f"s3://{BUCKET}/in/throughput.jsonl", f"s3://{BUCKET}/out/throughput/", batch_id="tp")
    record = client.wait_batch("tp", interval=0.2)
    batch_s = time.perf_counter() - t0
    assert record.counts["succeeded"] == jobs, record
    return {"jobs": jobs, "submit_many_jobs_s": round(jobs / sdk_s, 1), "batch_jobs_s": round(jobs / batch_s, 1),
            "batch_vs_submit_many": round(sdk_s / batch_s, 3)}


def submitter_rss(settings: Any, path: Path, batch_id: str) -> float:
    """Peak RSS (MiB) of a fresh process that submits ``path`` as a batch."""
    code = _SUBMITTER.format(bucket=BUCKET)
    out = subprocess.run([sys.executable, "-c", code, settings.redis_url, str(settings.s3_endpoint_url), str(path),
                          batch_id], capture_output=True, text=True, check=True)
    return round(int(out.stdout.split()[-1]) / 1024, 1)  # ru_maxrss is KiB on Linux


def write_lines(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"custom_id": f"line-{i}", **_job(i, 2)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fake:hash")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--docs", type=int, default=2)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    from rerankq.client.client import RerankClient

    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        settings, _, _ = _start_cluster(stack, args, args.model, Path(tmp) / "batches.jsonl")
        client = stack.enter_context(RerankClient(settings))
        s3 = client.results.client
        s3.create_bucket(Bucket=BUCKET)
        figures: dict[str, Any] = {"model": args.model, **throughput(client, s3, args.jobs, args.docs)}
        small, big = Path(tmp) / "small.jsonl", Path(tmp) / "big.jsonl"
        write_lines(small, 1000)
        write_lines(big, args.lines)
        figures["input_mib"] = round(os.path.getsize(big) / 2**20, 1)
        figures["submitter_rss_mib_1000_lines"] = submitter_rss(settings, small, "rss-small")
        t0 = time.perf_counter()
        figures[f"submitter_rss_mib_{args.lines}_lines"] = submitter_rss(settings, big, "rss-big")
        figures["submit_seconds_big"] = round(time.perf_counter() - t0, 1)
        figures["bench_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
