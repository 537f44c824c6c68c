"""``rerankq``: the command line. Heavy imports happen inside each command, so that the producer-side
commands (submit, status, result, cancel) work on an install without torch."""

from __future__ import annotations

import argparse
import logging
import sys


def _tiny_model(args: argparse.Namespace) -> int:
    from reranker.qwen3vl.tiny import write_tiny_model

    out = write_tiny_model(args.dir, seed=args.seed)
    print(f"wrote a tiny random-weight Qwen3-VL-Reranker checkpoint to {out}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from rerankq.settings import Settings
    from workers.main import run_worker

    return run_worker(Settings(), model=args.model, device=args.device, hostname=args.hostname,
                      loglevel="DEBUG" if args.verbose else "INFO")


def _bench(args: argparse.Namespace) -> int:
    from shell.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankq", description="Queue-based multimodal reranking.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny-model", help="write a tiny random-weight checkpoint (offline)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_tiny_model)

    from producer import dlq
    from producer.cli import add_commands

    add_commands(sub)
    dlq.add_commands(sub)
    worker = sub.add_parser("worker", help="one Celery worker process pinned to one device and one model")
    worker.add_argument("--model", default=None, help="model SPEC (default: RERANKQ_MODEL)")
    worker.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: RERANKQ_DEVICE)")
    worker.add_argument("--hostname", default=None, help="Celery node name (default: rerankq-DEVICE-PID@host)")
    worker.set_defaults(func=_worker)
    from shell.bench import add_arguments

    add_arguments(sub.add_parser("bench", help="throughput end to end and of the scorer alone (SPEC §7)"))
    from shell.demo import add_arguments as add_demo_arguments

    add_demo_arguments(sub.add_parser("demo", help="the embedded default: private Redis + S3 endpoint + worker + "
                                      "sample jobs, progress, ranked results"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
