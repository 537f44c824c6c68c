"""``python -m bench.redis_cost`` (or ``rerankq bench --redis-cost ...``): what each job costs Redis, by phase.

Starts a private cluster (redis-server on a free port, moto's S3 server, one ``rerankq worker`` on the fake
scorer ``fake:hash``, and a ``rerankq gateway`` when a run needs it), then for each ``--run MODE:JOBSxDOCS:KIND``
(modes in ``bench.redis_drive``; KIND as in ``rerankq bench``: text, image, image-query, video-query):

1. a warm-up of ``--warmup`` jobs in that mode (connection pools, scripts loaded, queues declared), not counted;
2. an *untraced* pass of JOBS jobs: commands Redis executed (``INFO commandstats``, Lua's inner calls
   included) and its CPU (``used_cpu_user + used_cpu_sys``), with nothing else switched on;
3. a *traced* pass of JOBS other jobs with every command logged (slowlog at 0 µs): each sent command, its
   client and Redis's timing of it, attributed to a phase (``bench.redis_phases``), Lua's inner calls with their
   script, commands the slowlog never shows inferred from commandstats.

Before the runs, ``--idle`` seconds with no jobs (traced) give the background rates (beats, sweeps, polls):
reported per second, and subtracted (rate × window) in the "net of idle" figures, so that beats do not pass
for per-job cost at small N. A window closes once the workers hold no message (every ack written) and half a
second has passed for their last events. Per-phase CPU is an estimate: each phase's measured execution time plus
a share, by commands sent, of the CPU Redis spent outside command execution (I/O, parsing, event loop, cron).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.redis_drive import MODES, Target, prepare
from bench.redis_phases import Attributor
from bench.redis_report import IdleRates, render, run_report
from bench.redis_trace import ProcessPorts, Recorder, Window
from bench.throughput import KINDS, make_requests, upload_media


@dataclass(frozen=True)
class Run:
    mode: str
    jobs: int
    docs: int
    kind: str

    @property
    def name(self) -> str:
        return f"{self.mode}:{self.jobs}x{self.docs}:{self.kind}"


def parse_run(text: str) -> Run:
    mode, _, rest = text.partition(":")
    shape, _, kind = rest.partition(":")
    try:
        jobs, docs = (int(x) for x in shape.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--run {text!r}: expected MODE:JOBSxDOCS:KIND, e.g. many:300x8:text") from None
    if mode not in MODES or kind not in KINDS or jobs < 1 or docs < 1:
        raise SystemExit(f"--run {text!r}: MODE is one of {', '.join(MODES)}, KIND one of {', '.join(KINDS)}; "
                         "JOBS and DOCS positive")
    return Run(mode, jobs, docs, kind)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", action="append", default=None, metavar="MODE:JOBSxDOCS:KIND",
                   help=f"MODE: {', '.join(MODES)}; e.g. many:300x8:text, batch:300x8:text (repeatable; default "
                        "many:300x8:text)")
    p.add_argument("--warmup", type=int, default=10, help="jobs run before each run's passes, not counted")
    p.add_argument("--idle", type=float, default=6.0, help="seconds of no jobs, for the background rates")
    p.add_argument("--concurrency", type=int, default=8, help="gateway calls in flight (mode gateway)")
    p.add_argument("--batch-poll", type=float, default=1.0, help="seconds between batch state reads (mode batch)")
    p.add_argument("--no-untraced", action="store_true", help="skip the untraced pass (CPU then traced only)")
    p.add_argument("--model", default="fake:hash", help="the worker's model SPEC")
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for a pass")
    p.add_argument("--items", type=int, default=6, help="commands listed per phase in the text output (0: none)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


class Bench:
    """The private cluster, the recorder and the attributor, for every run."""

    def __init__(self, stack: ExitStack, args: argparse.Namespace, runs: list[Run]) -> None:
        from bench.gateway import _start_gateway
        from bench.throughput import _start_cluster
        from rerankq.client.client import RerankClient

        record = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rerankq-cost-"))) / "passes.jsonl"
        self.settings, _, worker_pid = _start_cluster(stack, args, args.model, record)
        self.client = stack.enter_context(RerankClient(self.settings))
        self.ports = ProcessPorts(int(self.settings.redis_url.rsplit(":", 1)[1].split("/")[0]))
        self.ports.watch(os.getpid(), "bench")
        self.ports.watch(worker_pid, "worker")
        gateway_url = None
        if any(r.mode == "gateway" for r in runs):
            gateway_url, gateway_pid = _start_gateway(stack, self.settings)
            self.ports.watch(gateway_pid, "gateway")
        self.recorder = Recorder(self.settings.redis_url)
        stack.callback(self.recorder.close_client)
        self.attributor = Attributor(self.settings.queue_prefix)
        self.media = upload_media(self.client.results.client, {r.kind for r in runs})
        self.target = Target(self.client, gateway_url, args.concurrency, args.timeout, args.batch_poll)
        self.args = args
        self._seed = 0

    def requests(self, run: Run, jobs: int) -> list[dict[str, Any]]:
        self._seed += 1
        return make_requests(jobs, run.docs, run.kind, self.media, seed=self._seed)

    def settle(self, timeout: float = 30.0) -> None:
        """Until the workers hold no message (each job's ack written), then half a second for their last
        events and acks to reach Redis."""
        deadline = time.monotonic() + timeout
        while self.recorder.unacked() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)

    def window(self, traced: bool, body: Any) -> tuple[Window, Any]:
        """Run ``body()`` in a measured window (traced: every command logged); returns the window and its result."""
        self.recorder.trace(traced)
        try:
            with self.ports:
                self.recorder.open()
                out = body()
                self.settle()
                window = self.recorder.close(traced)
        finally:
            self.recorder.trace(False)
        return window, out

    def idle(self) -> IdleRates:
        window, _ = self.window(True, lambda: time.sleep(self.args.idle))
        return IdleRates(window, self.attributor.split(window, self.ports))

    def measure(self, run: Run, idle: IdleRates) -> dict[str, Any]:
        """Warm-up, the untraced pass, the traced pass: the run's report."""
        if self.args.warmup:
            prepare(run.mode, self.target, self.requests(run, self.args.warmup))()
            self.settle()
        untraced = None
        if not self.args.no_untraced:
            untraced = self.window(False, prepare(run.mode, self.target, self.requests(run, run.jobs)))
        traced, ok = self.window(True, prepare(run.mode, self.target, self.requests(run, run.jobs)))
        split = self.attributor.split(traced, self.ports)
        return run_report(run.name, MODES[run.mode], run.jobs, untraced, (traced, ok), split, idle)


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    """Start the cluster, measure the idle rates, then every run; the report (``--json``'s object)."""
    runs = [parse_run(r) for r in args.run or ["many:300x8:text"]]
    with ExitStack() as stack:
        bench = Bench(stack, args, runs)
        prepare("many", bench.target, bench.requests(runs[0], max(args.warmup, 1)))()  # pools, scripts, queues
        bench.settle()
        idle = bench.idle()
        reports = [bench.measure(run, idle) for run in runs]
        version = bench.recorder.redis.info("server")["redis_version"]
    conditions = {"model": args.model, "workers": 1, "redis": f"private redis-server {version}, no persistence",
                  "warmup_jobs": args.warmup, "gateway_concurrency": args.concurrency, "cpus": os.cpu_count(),
                  "slowlog_threshold_us": 0}
    return {"conditions": conditions, "idle": idle.report(), "runs": reports}


def main(argv: list[str] | None = None, prog: str = "python -m bench.redis_cost") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = measure_all(args)
    print(json.dumps(report) if args.json else render(report, args.items))
    return 0


if __name__ == "__main__":
    sys.exit(main())
