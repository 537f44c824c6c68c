"""What Redis's fsync policy costs a producer: ``python -m bench.fsync``.

Starts a private ``redis-server`` with ``appendonly yes`` for each policy (``everysec``, ``always``),
alternating them in one run, and times one ``submit`` and a ``submit_many`` of 1000 jobs through the SDK.
Prints the best of ``--rounds`` for each.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time

from rerankq.cli.cluster import free_port, stop_process, wait_for_port
from rerankq.client import RerankClient

JOB = {"query": {"text": "q"}, "documents": [{"text": "d"}]}


def _measure(policy: str, bulk: int, single: int) -> tuple[float, float]:
    port, workdir = free_port(), tempfile.mkdtemp(prefix="rerankq-fsync-")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--appendfsync", policy, "--dir", workdir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, 10, "redis-server", proc)
        with RerankClient(redis_url=f"redis://127.0.0.1:{port}/0") as client:
            t0 = time.perf_counter()
            client.submit_many([JOB] * bulk)
            many = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(single):
                client.submit(JOB)
            return many, (time.perf_counter() - t0) / single
    finally:
        stop_process(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bulk", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200)
    args = parser.parse_args(argv)
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):
        for policy in ("everysec", "always"):
            many, one = _measure(policy, args.bulk, args.single)
            old = best.get(policy, (float("inf"), float("inf")))
            best[policy] = (min(old[0], many), min(old[1], one))
    for policy, (many, one) in best.items():
        print(f"appendfsync {policy:8s}: submit_many of {args.bulk} jobs {many:.3f} s ({args.bulk / many:.0f} jobs/s); "
              f"one submit {1000 * one:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
