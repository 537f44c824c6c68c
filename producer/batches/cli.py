"""``rerankq batch submit | status | wait | cancel | list``.

Exit codes as for jobs (``rerankq.cli``): 0 the batch completed (or the command did its work); 1 it ended
``failed``, ``cancelled`` or ``expired``, or is unknown; 2 bad request; 3 timed out waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rerankq.batches import BatchRecord, BatchState, parse_window
from rerankq.client.progress import Progress


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``24h``, ``2d`` → seconds (an argparse type)."""
    try:
        return parse_window(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _client() -> Any:
    from rerankq.client.client import RerankClient

    return RerankClient()


def _show(record: BatchRecord, as_json: bool) -> None:
    if as_json:
        print(json.dumps(record.to_dict(), separators=(",", ":")))
        return
    c = record.counts
    print(f"{record.batch_id}: {record.state.value}, {record.done}/{c['total']} lines done "
          f"({c['succeeded']} succeeded, {c['failed']} failed, {c['cancelled']} cancelled, {c['expired']} expired; "
          f"{c['queued']} queued, {c['running']} running); output {record.output_uri}"
          + (f"; error: {record.error}" if record.error else ""))


def submit(args: argparse.Namespace) -> int:
    with _client() as client:
        record = client.submit_batch(args.input, args.output, batch_id=args.batch_id, priority=args.priority,
                                     model=args.model, completion_window_s=args.completion_window,
                                     callback_url=args.callback_url, npy=args.npy)
        if args.json:
            print(json.dumps(record.to_dict(), separators=(",", ":")))
        else:
            print(record.batch_id)
        return _wait(client, record.batch_id, args.timeout, args.json) if args.wait else 0


def status(args: argparse.Namespace) -> int:
    with _client() as client:
        _show(client.batch(args.batch_id), args.json)
    return 0


def wait(args: argparse.Namespace) -> int:
    with _client() as client:
        return _wait(client, args.batch_id, args.timeout, args.json)


def _wait(client: Any, batch_id: str, timeout: float | None, as_json: bool) -> int:
    """A progress bar on stderr (a terminal only): lines done / total, pairs/s, ETA; then the record."""
    started, first = time.monotonic(), None
    with Progress(None, batch_id, unit="line") as bar:

        def progress(record: BatchRecord) -> None:
            nonlocal first
            first = first if first is not None else record.pairs_done
            rate = (record.pairs_done - first) / max(time.monotonic() - started, 1e-6)
            bar.set(record.done, record.counts["total"] or None, state=record.state.value,
                    pairs_s=f"{rate:.0f}")

        try:
            record = client.wait_batch(batch_id, timeout=timeout, progress=progress)
        except TimeoutError as exc:
            bar.close()
            print(f"{exc} (--timeout)", file=sys.stderr)
            return 3
    _show(record, as_json)
    return 0 if record.state == BatchState.COMPLETED else 1


def cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        before = client.cancel_batch(args.batch_id)
    print(f"{args.batch_id}: cancelling" if before in ("validating", "in_progress") else
          f"{args.batch_id}: already {before}")
    return 0


def list_batches(args: argparse.Namespace) -> int:
    with _client() as client:
        for record in client.batches(args.limit):
            _show(record, args.json)
    return 0


def add_commands(sub: Any) -> None:
    """Register ``rerankq batch …``."""
    batch = sub.add_parser("batch", help="JSONL batches: a file of jobs in S3 in, a file of results out")
    cmds = batch.add_subparsers(dest="batch_command", required=True)
    p = cmds.add_parser("submit", help="run a JSONL file of jobs (s3://… or a local file, uploaded first)")
    p.add_argument("input", help="s3://bucket/key.jsonl or a local .jsonl file")
    p.add_argument("--output", required=True, help="s3://bucket/prefix/ for results/, errors/, manifest.json")
    p.add_argument("--batch-id", default=None, help="your id (default: derived from the input's URI and ETag); "
                   "submitting an existing id adds nothing")
    p.add_argument("--priority", default="low", choices=("high", "normal", "low"))
    p.add_argument("--model", default=None, help="the model SPEC its jobs name (default: the deployment's)")
    p.add_argument("--completion-window", type=duration, default=None, metavar="DURATION",
                   help="lines not started by then end expired (e.g. 24h)")
    p.add_argument("--callback-url", default=None, help="POSTed the batch's status when it ends")
    p.add_argument("--npy", action="store_true", help="embedding lines: also write each results part's vectors "
                   "as results/part-NNNNN.npy (float32) with an index results/part-NNNNN.index.jsonl")
    p.add_argument("--wait", action="store_true", help="wait until it ends, with a progress bar")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait with --wait")
    p.add_argument("--json", action="store_true", help="print the batch record as one JSON object")
    p.set_defaults(func=submit)
    p = cmds.add_parser("status", help="a batch's state and counts")
    p.add_argument("batch_id")
    p.add_argument("--json", action="store_true", help="the batch record as one JSON object")
    p.set_defaults(func=status)
    p = cmds.add_parser("wait", help="wait until a batch ends: a live progress bar (done / total, pairs/s, ETA)")
    p.add_argument("batch_id")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default: forever)")
    p.add_argument("--json", action="store_true", help="print the final record as one JSON object")
    p.set_defaults(func=wait)
    p = cmds.add_parser("cancel", help="cancel a batch: jobs in flight are cancelled, finished results kept")
    p.add_argument("batch_id")
    p.set_defaults(func=cancel)
    p = cmds.add_parser("list", help="the newest batches")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true", help="one JSON object per batch")
    p.set_defaults(func=list_batches)

