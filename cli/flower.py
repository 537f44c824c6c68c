"""``rerankq flower``: Flower, the Celery monitor, set up for this deployment.

Flower gets the broker from ``RERANKQ_REDIS_URL`` and rerankq's own Celery app, so its start-up log lists
``rerankq.rerank`` among the registered tasks and every job shows up as that task (state, runtime, worker).
It binds 127.0.0.1 unless ``--address`` says otherwise, and keeps task history across restarts in ``--db``
(default ``~/.local/state/rerankq/flower.db``; its folder is created). Flower can cancel jobs and shut
workers down, so it needs a login: ``FLOWER_BASIC_AUTH=user:password`` (or an OAuth provider,
``FLOWER_AUTH_PROVIDER``). Any other Flower option can be set as a ``FLOWER_*`` variable (``FLOWER_URL_PREFIX``,
``FLOWER_PORT``, ...); ``--address``, ``--port`` and ``--db`` win over theirs.

Flower 2.x has no throughput page: throughput over time is on the Grafana dashboard (``rerankq_*`` metrics
and Flower's own ``flower_events_total``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from rerankq.errors import RerankqError

# Options for every Flower of a rerankq deployment (the compose file and the Kubernetes manifest run this
# command too): workers that scaled away leave the list after 10 minutes; task history up to 50 000 jobs.
OPTIONS = {
    "persistent": "True",
    "state_save_interval": "60000",  # ms
    "max_tasks": "50000",
    "purge_offline_workers": "600",  # s
    "enable_events": "True",  # re-enable task events every few seconds: a restarted worker shows up
    "natural_time": "False",
    "tasks_columns": "name,uuid,state,received,started,runtime,worker,retries",
}
LOGIN_VARIABLES = ("FLOWER_BASIC_AUTH", "FLOWER_AUTH_PROVIDER")


class FlowerError(RerankqError):
    """Flower cannot start as configured; the message says what to set."""


def default_db() -> Path:
    return Path.home() / ".local" / "state" / "rerankq" / "flower.db"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1; "
                        "0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=None, help="port (default: FLOWER_PORT, else 5555)")
    parser.add_argument("--db", default=None, help=f"task history file (default: {default_db()})")
    parser.add_argument("--shard", type=int, default=None, help="with RERANKQ_REDIS_SHARDS: the shard whose "
                        "broker this Flower watches (default: RERANKQ_SHARD; required with several shards: run "
                        "one Flower per shard)")
    parser.set_defaults(func=run_flower)


def flower_argv(args: argparse.Namespace, db: Path) -> list[str]:
    """The ``celery flower`` command line: the deployment's options, then ours."""
    argv = ["flower", *(f"--{name}={value}" for name, value in OPTIONS.items()), f"--address={args.address}",
            f"--db={db}"]
    return argv + ([f"--port={args.port}"] if args.port is not None else [])


def run_flower(args: argparse.Namespace) -> int:
    """Start Flower in this process until Ctrl-C / SIGTERM."""
    if importlib.util.find_spec("flower") is None:
        raise ModuleNotFoundError("No module named 'flower'", name="flower")
    if not any(os.environ.get(name) for name in LOGIN_VARIABLES):
        raise FlowerError("Flower needs a login: set FLOWER_BASIC_AUTH=user:password (Flower can cancel jobs "
                          "and shut workers down)")
    db = Path(args.db or default_db()).expanduser()
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlowerError(f"cannot create the folder of --db {db}: {exc.strerror or exc}") from None

    from rerankq.shards import serving
    from rerankq.worker.app import make_app

    app = make_app(serving(getattr(args, "shard", None), "rerankq flower"))
    return int(app.start(argv=flower_argv(args, db)) or 0)
