"""The dead-letter list: queue entries workers could not run as rerank jobs, kept for an operator.

Workers move there a queue entry that is not a Celery message (not JSON, no ``properties``: ``entry``) and a
``rerankq.rerank`` message whose arguments are not one job object (``message``), instead of dying or dropping
it. ``rerankq dlq list`` shows them; ``rerankq dlq redrive`` puts them back (an entry as it was, a message
sent again with its task id) once the producer or the worker is fixed; ``rerankq dlq purge`` drops them. The
list's length is the worker metric ``rerankq_dlq_length``.
"""

from __future__ import annotations

import json
from typing import Any

import redis
from celery import Celery

from rerankq import celeryconf, keys
from rerankq.connections import redis_client
from rerankq.settings import Settings


class DeadLetters:
    """Read, redrive and purge the dead-letter list of a deployment."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.redis = client if client is not None else redis_client(settings)
        self.key = keys.dlq_key(settings)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first, each with its ``index``."""
        return [{"index": i, **json.loads(raw)} for i, raw in enumerate(self.redis.lrange(self.key, 0, -1))]

    def redrive(self, indexes: list[int] | None = None) -> int:
        """Put entries back in their queues (all when ``indexes`` is None); returns how many went back."""
        raws = [raw.decode() if isinstance(raw, bytes) else str(raw) for raw in self.redis.lrange(self.key, 0, -1)]
        chosen = range(len(raws)) if indexes is None else [i for i in indexes if 0 <= i < len(raws)]
        celery: Celery | None = None
        sent = 0
        for i in chosen:
            entry = json.loads(raws[i])
            if entry.get("kind") == "message":
                celery = celery or self._celery()
                message = json.loads(entry["raw"])
                celery.send_task(keys.TASK_NAME, args=message.get("args") or [], kwargs=message.get("kwargs") or {},
                                 task_id=message.get("task_id"), queue=entry["queue"])
            else:
                self.redis.lpush(entry["queue"], entry["raw"])
            self.redis.lrem(self.key, 1, raws[i])
            sent += 1
        if celery is not None:
            celery.close()
        return sent

    def purge(self) -> int:
        """Drop every entry; returns how many there were."""
        pipe = self.redis.pipeline()
        pipe.llen(self.key)
        pipe.delete(self.key)
        return int(pipe.execute()[0])

    def _celery(self) -> Celery:
        app = Celery("rerankq-dlq", set_as_current=False)
        app.conf.update(celeryconf.celery_config(self.settings))
        return app


def add_commands(sub: Any) -> None:
    """``rerankq dlq list|redrive|purge``."""
    p = sub.add_parser("dlq", help="the dead-letter list: queue entries workers could not run")
    actions = p.add_subparsers(dest="dlq_action", required=True)
    listing = actions.add_parser("list", help="show the entries (one JSON object per line with --json)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_list)
    redrive = actions.add_parser("redrive", help="put entries back in their queues")
    redrive.add_argument("index", nargs="*", type=int, help="entries to put back (default: all)")
    redrive.set_defaults(func=_redrive)
    purge = actions.add_parser("purge", help="drop every entry")
    purge.set_defaults(func=_purge)


def _list(args: Any) -> int:
    entries = DeadLetters(Settings()).entries()
    for entry in entries:
        if args.json:
            print(json.dumps(entry))
        else:
            print(f"[{entry['index']}] {entry['queue']}: {entry['reason']}  {entry['raw'][:80]!r}")
    if not entries and not args.json:
        print("the dead-letter list is empty")
    return 0


def _redrive(args: Any) -> int:
    print(f"{DeadLetters(Settings()).redrive(args.index or None)} entries put back")
    return 0


def _purge(args: Any) -> int:
    print(f"{DeadLetters(Settings()).purge()} entries dropped")
    return 0
