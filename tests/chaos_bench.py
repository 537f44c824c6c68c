"""Chaos figures, run by hand (nothing here is asserted; the chaos tests assert behaviour):

    python -m tests.chaos_bench kill --lease 30      # SIGKILL a busy worker: time to finish its stranded jobs
    python -m tests.chaos_bench kill --lease 3
    python tests/chaos_bench.py commands --tree . --model fake:hash         # Redis commands per job, this tree
    python tests/chaos_bench.py commands --tree /tmp/old --model TINY_DIR   # ... an older checkout

``commands`` is self-contained (it imports only the SDK of the tree it measures, with that tree first on
``sys.path``): a private ``redis-server``, moto's S3 server, one worker of that tree, ``--jobs`` jobs
submitted in one ``submit_many`` and read back with ``as_completed`` + ``result``; it prints the Redis
commands the whole system ran (``INFO commandstats``, reset just before the submit) per job.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _commandstats(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


class _Monitor:
    """Counts the commands clients send (``MONITOR``), leaving out those Lua scripts run inside Redis."""

    def __init__(self, port: int) -> None:
        import threading

        import redis

        self.client = redis.Redis(port=port)
        self.counts: dict[str, int] = {}
        self.lua = 0
        self.on = False
        self._monitor = self.client.monitor().__enter__()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for entry in self._monitor.listen():
                if not self.on:
                    continue
                if entry.get("client_type") == "lua":
                    self.lua += 1
                    continue
                name = str(entry.get("command", "")).split(" ", 1)[0].strip('"').lower()
                self.counts[name] = self.counts.get(name, 0) + 1
        except Exception:  # closed
            return


def commands(tree: Path, model: str, jobs: int, docs: int) -> None:
    """Redis commands per job, submit to result, for the code in ``tree`` (see the module doc)."""
    sys.path.insert(0, str(tree))
    import redis
    from moto.server import ThreadedMotoServer

    from rerankq.client import RerankClient
    from rerankq.settings import Settings

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    port, s3_port = _free_port(), _free_port()
    workdir = tempfile.mkdtemp(prefix="rerankq-bench-redis-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", workdir], stdout=subprocess.DEVNULL)
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "RERANKQ_REDIS_URL": url, "RERANKQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
           "RERANKQ_QUEUE_PREFIX": "bench", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    cli = "shell.cli" if (tree / "shell" / "cli.py").exists() else "rerankq.cli"  # before / after one package
    log = open(Path(workdir) / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", cli, "worker", "--model", model, "--device", "cpu"], cwd=tree,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while b" ready." not in (Path(workdir) / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((Path(workdir) / "worker.log").read_text()[-3000:])
            time.sleep(0.2)
        time.sleep(2.0)  # let start-up traffic settle
        stats = redis.Redis(port=port)
        client = RerankClient(Settings(redis_url=url, s3_endpoint_url=f"http://127.0.0.1:{s3_port}",
                                       queue_prefix="bench"))
        requests = [{"query": {"text": f"query {i}"}, "documents": [{"text": f"doc {i}.{d}"} for d in range(docs)]}
                    for i in range(jobs)]
        monitor = _Monitor(port)
        time.sleep(0.5)
        stats.config_resetstat()
        monitor.on = True
        t0 = time.monotonic()
        ids = client.submit_many(requests)
        finished = [job_id for job_id, _ in client.as_completed(ids, timeout=600)]
        for job_id in ids:
            client.result(job_id)
        seconds = time.monotonic() - t0
        monitor.on = False
        calls = _commandstats(stats)
        sent = {k: v for k, v in monitor.counts.items() if k not in ("info", "config")}
        for own in ("info", "config|resetstat", "config"):
            calls.pop(own, None)
        total = sum(calls.values())
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:12]
        print(json.dumps({"tree": str(tree), "model": model, "jobs": jobs, "docs_per_job": docs,
                          "finished": len(finished), "seconds": round(seconds, 2),
                          "sent_per_job": round(sum(sent.values()) / jobs, 1),
                          "sent_top": {k: round(v / jobs, 2) for k, v in
                                       sorted(sent.items(), key=lambda kv: -kv[1])[:12]},
                          "executed_per_job_incl_lua": round(total / jobs, 1),
                          "executed_top": {k: round(v / jobs, 2) for k, v in top}}))
        client.close()
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        s3.stop()
        server.terminate()
        server.wait(10)


def kill(lease: int, jobs: int) -> None:
    """Two workers, ``jobs`` jobs; SIGKILL the one scoring a round; time until its stranded jobs are finished."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rerankq.cli.cluster import S3Server
    from tests.chaos_kit import SLOW, Audit, Cluster, Redis, hostname_of, records, settle, text_job, wait_until

    server = Redis().start()
    tmp = tempfile.mkdtemp(prefix="rerankq-chaos-bench-")  # the workers' logs stay there
    with S3Server() as s3:
        c = Cluster(server.url, s3.url, Path(tmp), lease_s=lease, RERANKQ_BATCH__FLUSH_INTERVAL_MS="300")
        try:
            a, _ = c.start(2, SLOW)
            client, r = c.client(), c.redis()
            ids = client.submit_many([text_job(i, 3, "k", job_id=f"k-{i}") for i in range(jobs)])

            def held() -> list[str]:
                return [j for j, rec in records(r, c.prefix, ids).items()
                        if rec.get("state") == "running" and rec.get("worker") == hostname_of(a)
                        and int(rec.get("pairs_done", 0)) > 0]

            wait_until(held, 120, "worker A to be scoring")
            stranded = [j for j, rec in records(r, c.prefix, ids).items()
                        if rec.get("state") == "running" and rec.get("worker") == hostname_of(a)]
            a.proc.send_signal(signal.SIGKILL)
            killed = time.time()
            audit = Audit(settle(r, c.prefix, ids, 10 * lease + 120))
            last = max(float(audit.records[j].get("finished_at") or "nan") for j in stranded)
            print(audit.line(f"SIGKILL, lease {lease} s"))
            print(json.dumps({"lease_s": lease, "stranded": len(stranded),
                              "kill_to_last_stranded_finished_s": round(last - killed, 1),
                              "lost": len(audit.lost), "stuck": len(audit.stuck),
                              "duplicated": len(audit.duplicated), "logs": tmp,
                              "problems": {j: audit.records[j] for j in audit.lost + audit.stuck}}))
        finally:
            c.close()
            server.stop()


def kill_loop(kills: int, jobs: int) -> None:
    """SIGKILL a worker again and again while it is fetching a backlog (lease 3 s); count the jobs that never
    end. kombu's Redis transport pops a message (BRPOP) before it records it as held (``unacked``): a kill
    between the two loses the message, and the job's record stays ``queued`` with nothing to run it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rerankq.cli.cluster import S3Server
    from tests.chaos_kit import Audit, Cluster, Redis, settle, text_job
    from tests.integration.conftest import _wait_ready

    server = Redis().start()
    tmp = tempfile.mkdtemp(prefix="rerankq-chaos-bench-")
    with S3Server() as s3:
        c = Cluster(server.url, s3.url, Path(tmp), lease_s=3, RERANKQ_BATCH__FLUSH_INTERVAL_MS="200")
        try:
            client, r = c.client(), c.redis()
            ids = client.submit_many([text_job(i, 1, "loop", job_id=f"loop-{i}") for i in range(jobs)])
            for _ in range(kills):
                w = c.spawn("fake:l4-8b")
                _wait_ready(w)
                time.sleep(0.7)  # fetching and scoring
                w.proc.send_signal(signal.SIGKILL)
                w.proc.wait(10)
            c.start(1, "fake:hash")
            audit = Audit(settle(r, c.prefix, ids, 120))
            print(audit.line(f"{kills} SIGKILLs while fetching"))
            print(json.dumps({"kills": kills, "jobs": jobs, "lost": len(audit.lost), "stuck": len(audit.stuck),
                              "duplicated": len(audit.duplicated), "logs": tmp,
                              "stuck_records": {j: audit.records[j] for j in audit.stuck[:5]},
                              "queues": [r.llen(f"{c.prefix}.{p}") for p in ("high", "normal", "low")],
                              "unacked": r.hlen("unacked")}))
        finally:
            c.close()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kill")
    k.add_argument("--lease", type=int, default=30)
    k.add_argument("--jobs", type=int, default=160)
    kl = sub.add_parser("kill-loop")
    kl.add_argument("--kills", type=int, default=8)
    kl.add_argument("--jobs", type=int, default=2000)
    c = sub.add_parser("commands")
    c.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    c.add_argument("--model", default="fake:hash")
    c.add_argument("--jobs", type=int, default=300)
    c.add_argument("--docs", type=int, default=4)
    args = parser.parse_args()
    if args.what == "kill":
        kill(args.lease, args.jobs)
    elif args.what == "kill-loop":
        kill_loop(args.kills, args.jobs)
    else:
        commands(args.tree.resolve(), args.model, args.jobs, args.docs)


if __name__ == "__main__":
    main()
