"""``python -m bench.gateway``: what the HTTP gateway costs, measured against the SDK in the same run.

Starts a private cluster (redis-server, moto's S3 server, one tiny-model worker, one ``rerankq gateway``), then:

1. *overhead*: the same small job, alternately through the SDK (``submit`` + ``result``) and as a synchronous
   ``POST /v2/rerank``, one at a time; prints p50 / p95 of each and the difference;
2. *throughput*: ``--concurrency`` clients keep tiny sync calls in flight for ``--seconds``; prints requests/s,
   next to the jobs/s the SDK sustains with the same concurrency (the worker's ceiling on this machine).

Figures are printed, never asserted. Against a running gateway: ``--url`` (and ``--key``), SDK side skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.throughput import _start_cluster, percentile
from rerankq.cli.demo import _model_spec


def _job(i: int, docs: int) -> dict[str, Any]:
    return {"query": f"query {i} about a red backpack", "documents": [f"document {d} of call {i}" for d in range(docs)]}


def _sdk_job(i: int, docs: int) -> dict[str, Any]:
    call = _job(i, docs)
    return {"query": {"text": call["query"]}, "documents": [{"text": d} for d in call["documents"]]}


def overhead(client: Any, url: str, headers: dict[str, str], n: int, docs: int) -> dict[str, float]:
    import httpx

    sdk, http = [], []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as session:
        for i in range(n):
            t0 = time.perf_counter()
            client.result(client.submit(_sdk_job(i, docs)), timeout=60)
            sdk.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            session.post("/v2/rerank", json=_job(i, docs)).raise_for_status()
            http.append(time.perf_counter() - t0)
    out = {}
    for name, values in (("sdk", sdk), ("gateway", http)):
        out[f"{name}_p50_ms"] = round(1000 * percentile(values, 0.5), 2)
        out[f"{name}_p95_ms"] = round(1000 * percentile(values, 0.95), 2)
    out["overhead_p50_ms"] = round(out["gateway_p50_ms"] - out["sdk_p50_ms"], 2)
    out["overhead_p95_ms"] = round(out["gateway_p95_ms"] - out["sdk_p95_ms"], 2)
    return out


async def _gateway_load(url: str, headers: dict[str, str], concurrency: int, seconds: float, docs: int) -> int:
    import httpx

    done = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as session:
        async def loop(k: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < deadline:
                (await session.post("/v2/rerank", json=_job(k * 100_000 + i, docs))).raise_for_status()
                done += 1
                i += 1

        await asyncio.gather(*(loop(k) for k in range(concurrency)))
    return done


def _sdk_load(client: Any, concurrency: int, seconds: float, docs: int) -> int:
    done = [0]
    deadline = time.monotonic() + seconds
    lock = threading.Lock()

    def loop(k: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            client.result(client.submit(_sdk_job(k * 100_000 + i, docs)), timeout=120)
            with lock:
                done[0] += 1
            i += 1

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_gateway(stack: contextlib.ExitStack, settings: Any) -> tuple[str, int]:
    from rerankq.cli.cluster import free_port, stop_process, wait_for_port

    port = free_port()
    env = {**os.environ, "RERANKQ_REDIS_URL": settings.redis_url, "RERANKQ_S3_ENDPOINT_URL": settings.s3_endpoint_url}
    log = stack.enter_context(tempfile.NamedTemporaryFile(prefix="rerankq-bench-gateway-", suffix=".log"))  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "rerankq.cli", "gateway", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    stack.callback(stop_process, proc, 10.0)
    try:
        wait_for_port(port, 60, "the gateway", proc)  # type: ignore[arg-type]
    except RuntimeError as exc:
        raise SystemExit(f"{exc}\n{Path(log.name).read_text(errors='replace')[-3000:]}") from None
    return f"http://127.0.0.1:{port}", proc.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="sequential calls per side for the overhead")
    parser.add_argument("--docs", type=int, default=2, help="documents per call (tiny jobs)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight for the throughput")
    parser.add_argument("--seconds", type=float, default=20, help="duration of each throughput run")
    parser.add_argument("--model", default=None, help="model SPEC (default: the tiny model)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from rerankq.client.client import RerankClient

    with contextlib.ExitStack() as stack:
        record = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rerankq-gw-bench-"))) / "passes.jsonl"
        settings, _, _ = _start_cluster(stack, args, _model_spec(args.model), record)
        url, pid = _start_gateway(stack, settings)
        client = stack.enter_context(RerankClient(settings))
        overhead(client, url, {}, 10, args.docs)  # warm up both paths
        print(f"overhead, {args.calls} sequential calls each, {args.docs} documents:")
        for key, value in overhead(client, url, {}, args.calls, args.docs).items():
            print(f"  {key:>18}: {value}")
        sdk_done = _sdk_load(client, args.concurrency, args.seconds, args.docs)
        cpu = cpu_seconds(pid)
        gw_done = asyncio.run(_gateway_load(url, {}, args.concurrency, args.seconds, args.docs))
        cpu = cpu_seconds(pid) - cpu
        print(f"throughput, {args.concurrency} in flight, {args.seconds:g} s each, {args.docs} documents per call "
              f"(load generator, gateway, worker, Redis and S3 share this machine's {os.cpu_count()} cores):")
        print(f"  gateway: {gw_done / args.seconds:.1f} requests/s; SDK, same concurrency: "
              f"{sdk_done / args.seconds:.1f} jobs/s")
        print(f"  gateway process CPU: {1000 * cpu / max(gw_done, 1):.2f} ms per request "
              f"(one core would carry ~{gw_done / max(cpu, 1e-9):.0f} requests/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
