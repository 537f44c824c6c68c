"""Producer commands of ``rerankq``: submit, status, result, cancel. No torch needed.

Exit codes: 0 done; 1 the job failed, was cancelled or is unknown; 2 bad request; 3 timed out waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerankq.errors import InvalidRequest, JobFailed, NoSuchJob

if TYPE_CHECKING:
    from producer.client import RerankClient


def _client() -> RerankClient:
    from producer.client import RerankClient

    return RerankClient()


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _read_jobs(path: str) -> list[dict[str, Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"not JSON: {exc}", "request") from None
    return data if isinstance(data, list) else [data]


def submit(args: argparse.Namespace) -> int:
    jobs = _read_jobs(args.file)
    with _client() as client:
        ids = client.submit_many(jobs)
        if not args.wait:
            print("\n".join(ids))
            return 0
        results = [client.result(job_id, timeout=args.timeout) for job_id in ids]
    _print(results[0] if len(results) == 1 else results)
    return 0


def status(args: argparse.Namespace) -> int:
    with _client() as client:
        _print(client.status(args.job_id))
    return 0


def result(args: argparse.Namespace) -> int:
    with _client() as client:
        _print(client.result(args.job_id, timeout=args.timeout if args.wait else 0))
    return 0


def cancel(args: argparse.Namespace) -> int:
    with _client() as client:
        before = client.cancel(args.job_id)
    print(f"{args.job_id}: cancelled" if before in ("queued", "running") else f"{args.job_id}: already {before}")
    return 0


def guarded(func: Any) -> Any:
    """Turn the expected errors into one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except InvalidRequest as exc:
            print(f"invalid request: {exc}", file=sys.stderr)
            return 2
        except (NoSuchJob, JobFailed) as exc:
            print(str(exc), file=sys.stderr)
            return 1
        except TimeoutError as exc:
            print(f"timed out: {exc}", file=sys.stderr)
            return 3

    return run


def add_commands(sub: Any) -> None:
    """Register submit / status / result / cancel on ``rerankq``'s subparsers."""
    p = sub.add_parser("submit", help="enqueue a job (JSON file, - for stdin; a JSON list submits many)")
    p.add_argument("file")
    p.add_argument("--wait", action="store_true", help="wait and print the result(s)")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait with --wait (default: forever)")
    p.set_defaults(func=guarded(submit))
    p = sub.add_parser("status", help="a job's state and progress")
    p.add_argument("job_id")
    p.set_defaults(func=guarded(status))
    p = sub.add_parser("result", help="a job's result")
    p.add_argument("job_id")
    p.add_argument("--wait", action="store_true", help="wait until the job finishes")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait with --wait (default: forever)")
    p.set_defaults(func=guarded(result))
    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(func=guarded(cancel))
