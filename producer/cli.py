"""Producer commands of ``rerankq``: submit, embed, status, result, cancel. No torch needed.

Exit codes (the table is in ``rerankq.cli``, which turns errors into them): 0 done; 1 a job failed, was
cancelled or is unknown, or a cancel came too late (the job is finishing or ended); 2 bad request; 3 timed
out waiting; 4 Redis unreachable.

One job prints its result (or status) as indented JSON; several print one JSON line per job, so the output
pipes into ``jq -c`` or a JSONL reader.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerankq.client.progress import Progress
from rerankq.errors import InvalidRequest, NoSuchJob

if TYPE_CHECKING:
    from rerankq.client.client import RerankClient


def _client() -> RerankClient:
    from rerankq.client.client import RerankClient

    return RerankClient()


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _line(obj: Any) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def _read_jobs(path: str) -> Any:
    """The JSON in ``path`` (``-`` = stdin): one job object, or a list of them."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"not JSON: {exc}", "request") from None


def submit(args: argparse.Namespace) -> int:
    data = _read_jobs(args.file)
    with _client() as client:
        if not isinstance(data, list):
            job_id = client.submit(data)
            if args.wait:
                _print(client.result(job_id, timeout=args.timeout))
            else:
                print(job_id)
            return 0
        ids = client.submit_many(data)
        if not args.wait:
            print("\n".join(ids))
            return 0
        return _wait_all(client, ids, args.timeout)


def _wait_all(client: Any, ids: list[str], timeout: float | None) -> int:
    """One JSON line per job as it finishes: its result, or its status when it did not succeed. When
    ``timeout`` (for the whole list) ends first, the status line of every unfinished job, and exit 3."""
    pending, failed = dict.fromkeys(ids), 0
    bar = Progress(len(ids), "jobs")  # stderr, on a terminal only: stdout stays one JSON line per job
    try:
        for job_id, outcome in client.as_completed(ids, timeout=timeout, progress=lambda done, _: bar.update()):
            del pending[job_id]
            if isinstance(outcome, NoSuchJob):
                _line({"job_id": job_id, "state": None, "error": str(outcome)})
            elif isinstance(outcome, Exception):
                _line(client.status(job_id))
            else:
                _line(outcome)
            failed += isinstance(outcome, Exception)
    except TimeoutError:
        bar.close()
        for status in client.statuses(list(pending)):
            if status is not None:
                _line(status)
        print(f"timed out after {timeout:g} s (--timeout): {len(pending)} of {len(ids)} jobs unfinished",
              file=sys.stderr)
        return 3
    bar.close()
    if failed:
        print(f"{failed} of {len(ids)} jobs did not succeed", file=sys.stderr)
        return 1
    return 0


def _read_inputs(path: str) -> list[Any]:
    """The inputs in a JSONL file (``-`` = stdin): one per line, a JSON string (a text) or an object with
    ``text`` / ``image`` / ``video``; blank lines are skipped."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}", "input") from None
    inputs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                inputs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidRequest(f"{path} line {number}: not JSON: {exc}", "input") from None
    return inputs


def embed(args: argparse.Namespace) -> int:
    inputs: list[Any] = list(args.texts) + (_read_inputs(args.input) if args.input else [])
    if not inputs:
        raise InvalidRequest("nothing to embed: give texts as arguments or --input FILE.jsonl", "inputs")
    fields = {"dimensions": args.dimensions, "instruction": args.instruction, "encoding_format": args.encoding,
              "priority": args.priority}
    with _client() as client:
        _print(client.embed(inputs, model=args.model, timeout=args.timeout,
                            **{k: v for k, v in fields.items() if v is not None}))
    return 0


def status(args: argparse.Namespace) -> int:
    with _client() as client:
        if len(args.job_ids) == 1:
            _print(client.status(args.job_ids[0]))
            return 0
        unknown = 0
        for job_id, found in zip(args.job_ids, client.statuses(args.job_ids), strict=True):
            if found is None:
                print(f"no such job: {job_id}", file=sys.stderr)
                unknown += 1
            else:
                _line(found)
    return 1 if unknown else 0


def result(args: argparse.Namespace) -> int:
    with _client() as client:
        _print(client.result(args.job_id, timeout=args.timeout if args.wait else 0))
    return 0


def cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        before = client.cancel(args.job_id)
    print(f"{args.job_id}: cancelled" if before in ("queued", "running") else f"{args.job_id}: already {before}")
    return 0


def add_commands(sub: Any) -> None:
    """Register submit / embed / status / result / cancel on ``rerankq``'s subparsers."""
    p = sub.add_parser("submit", help="enqueue a job (JSON file, - for stdin; a JSON list submits many)")
    p.add_argument("file")
    p.add_argument("--wait", action="store_true", help="wait and print the result(s): a list prints one JSON "
                   "line per job, failures included")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait with --wait, for the whole list "
                   "(default: forever)")
    p.set_defaults(func=submit)
    p = sub.add_parser("embed", help="embed texts (arguments) and/or the inputs of a JSONL file; print the result")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--input", default=None, metavar="FILE.jsonl", help="one input per line: a JSON string or an "
                   "object with text / image / video (- for stdin); embedded after the TEXT arguments")
    p.add_argument("--model", default=None, help="the embedding model's SPEC (default: the deployment's)")
    p.add_argument("--dimensions", type=int, default=None, help="keep the first N components (Matryoshka)")
    p.add_argument("--instruction", default=None, help="the task instruction (default: the model's own)")
    p.add_argument("--encoding", default=None, choices=("float", "base64"), help="vectors as numbers (default) "
                   "or base64 float32")
    p.add_argument("--priority", default=None, choices=("high", "normal", "low"))
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: forever)")
    p.set_defaults(func=embed)
    p = sub.add_parser("status", help="the state and progress of one or more jobs")
    p.add_argument("job_ids", nargs="+", metavar="JOB_ID")
    p.set_defaults(func=status)
    p = sub.add_parser("result", help="a job's result")
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="wait until the job finishes")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait with --wait (default: forever)")
    p.set_defaults(func=result)
    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(func=cancel)
