"""Which phase of a job's life each Redis command belongs to, for ``bench.redis_cost``.

Measured: each command a client sent (the slowlog) with Redis's timing of it; each command a Lua script ran
(logged just before its script, so counted with the script's phase); what commandstats counted.
Attributed, by rules on the command, its key, its script (by SHA-1 of the scripts this project and kombu /
redis-py load) and the process that sent it: the phase. ``SCRIPT`` / ``MULTI`` / ``WATCH`` go with the next
command on the same connection (the pipeline they open); a read of a job's state followed on the same
connection by a read of the whole record is the client reading a result, otherwise the client waiting.
Inferred, not seen: commands commandstats counted that the slowlog never shows: ``EXEC`` (one per ``MULTI``,
in its phase) and blocking reads that timed out (spread over the phases that ran that command).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

from bench.redis_trace import Entry, ProcessPorts, Window

PHASES = {  # name -> what it holds; job phases first, then the beats that run with or without jobs
    "submit": "records created (CREATE), pending sets, messages published (LPUSH), gateway's recent list",
    "take": "kombu fetch (BRPOP, timed-out ones inferred; RPOP of the round's others) and unacked bookkeeping "
            "(ZADD/HSET, pending ZREM)",
    "accept": "the worker task's record check (CREATE, for a message no SDK made a record for)",
    "start": "START script (mark running, fence)",
    "cancel check": "the worker's cancels counter read before each forward pass (GET), and its jobs' states "
                    "when it moved (HGET state)",
    "progress": "PROGRESS script (pairs_done; a job at most once a second, none in its first second)",
    "finish": "COMMIT / FINISH / REQUEUE scripts (done token, notify, callback event inside)",
    "ack": "kombu ack (MULTI ZREM unacked_index / HDEL unacked)",
    "result backend": "Celery's celery-task-meta (GET, SETEX, PUBLISH)",
    "events": "Celery task events (task.sent from producers, task.multi from workers)",
    "client wait": "the client waiting: its notify list (BLPOP, LPOP), state polls (OBSERVE), done tokens",
    "client read": "the client reading a result (HGETALL of an ended record, or OBSERVE + HGETALL)",
    "batch runner": "a JSONL batch's runner: lock, cursor, in-flight lines, ended list, sweeps",
    "leases": "lease renewals (ZADD XX unacked_index)",
    "restore sweep": "kombu's unacked restore (mutex, ZRANGE of unacked_index)",
    "reaper": "lost-message reaper (REAP script)",
    "registry": "worker registry beat and pairs throughput counter",
    "heartbeat": "Celery worker-heartbeat events",
    "metrics": "/metrics scrapes (queue lengths)",
    "callbacks": "callback outbox deliverer",
    "score cache": "score cache lookups and writes",
    "connections": "connection set-up and health checks (HELLO, CLIENT, PING)",
    "other": "not matched by any rule (see items)",
}
BACKGROUND = ("leases", "restore sweep", "reaper", "registry", "heartbeat", "metrics", "callbacks", "connections")
CONNECTION = {"HELLO", "PING", "CLIENT", "SELECT", "AUTH", "QUIT", "RESET"}
FOLLOWS = {"SCRIPT", "MULTI", "WATCH", "UNWATCH", "DISCARD"}  # the phase of the next command on the connection
CONTAINERS_SHOWN = {"CONFIG", "COMMAND", "SLOWLOG", "INFO"}  # named by command and subcommand
READS = {"GET", "HGET", "HGETALL", "HMGET", "HKEYS", "EXISTS", "LLEN", "LRANGE", "ZCARD", "ZRANGE", "ZSCORE"}
BLOCKING = {"brpop": "take", "blpop": "client wait", "bzpopmin": "other", "blmove": "other"}

CMD_KIND = {
    ("BRPOP", "queue"): "take", ("RPOP", "queue"): "take", ("LPUSH", "queue"): "submit", ("RPUSH", "queue"): "reaper",
    ("ZADD", "unacked_index"): "take", ("ZREM", "unacked_index"): "ack", ("ZRANGE", "unacked_index"): "restore sweep",
    ("ZREVRANGEBYSCORE", "unacked_index"): "restore sweep",
    ("HSET", "unacked"): "take", ("HDEL", "unacked"): "ack", ("HGET", "unacked"): "restore sweep",
    ("ZADD", "pending"): "submit", ("ZREM", "pending"): "take", ("ZRANGEBYSCORE", "pending"): "reaper",
    ("HDEL", "pending:msg"): "take", ("HSET", "pending:msg"): "restore sweep", ("HGET", "pending:msg"): "reaper",
    ("HGETALL", "job"): "client read", ("HGET", "job"): "client read", ("HMGET", "job"): "reaper",
    ("DEL", "job"): "submit",
}
KIND = {"done": "client wait", "task-meta": "result backend", "unacked_mutex": "restore sweep",
        "kombu-binding": "submit", "worker": "registry", "stats": "registry", "callbacks": "callbacks",
        "gateway:recent": "submit", "gateway:wake": "client wait", "notify": "client wait", "score": "score cache",
        "celeryev/worker.heartbeat": "heartbeat", "cancels": "cancel check"}
SCRIPT_PHASE = {"start": "start", "progress": "progress", "commit": "finish", "finish": "finish",
                "requeue": "finish", "reap": "reaper", "callback claim": "callbacks", "callback retry": "callbacks",
                "callback drop": "callbacks", "batch create": "submit", "batch move": "batch runner",
                "batch renew": "batch runner", "kombu refresh binding": "submit", "kombu sweep bindings": "submit"}


def script_names() -> dict[str, str]:
    """SHA-1 -> name of every Lua script the project, kombu and redis-py's lock load (``EVALSHA`` names it)."""
    from kombu.transport import redis as kombu_redis
    from redis.lock import Lock

    from rerankq import batches, callbacks, transitions
    from rerankq.client.batches import runner
    from rerankq.worker import reaper

    scripts = {"create": transitions.CREATE, "create sent": transitions.CREATE_SENT, "observe": transitions.OBSERVE,
               "start": transitions.START_MANY,
               "progress": transitions.PROGRESS, "commit": transitions.COMMIT, "finish": transitions.FINISH_MANY,
               "requeue": transitions.REQUEUE, "cancel": transitions.CANCEL, "reap": reaper._REAP,
               "callback claim": callbacks._CLAIM, "callback retry": callbacks._RETRY, "callback drop": callbacks._DROP,
               "batch create": batches._CREATE, "batch cancel": batches._CANCEL, "batch move": batches._MOVE,
               "batch renew": runner._RENEW, "kombu refresh binding": kombu_redis.REFRESH_BINDING,
               "kombu sweep bindings": kombu_redis.SWEEP_BINDINGS, "lock release": Lock.LUA_RELEASE_SCRIPT,
               "lock extend": Lock.LUA_EXTEND_SCRIPT, "lock reacquire": Lock.LUA_REACQUIRE_SCRIPT}
    names: dict[str, str] = {}
    for name, source in scripts.items():  # the first name wins: a batch record is created by the job's script
        names.setdefault(hashlib.sha1(source.encode()).hexdigest(), name)
    return names


def key_kinds(prefix: str) -> list[tuple[re.Pattern[str], str]]:
    """Patterns of every key and channel this deployment uses (``rerankq.keys``), most specific first."""
    p = re.escape(prefix)
    table = [(rf"^{p}:job:.*:done$", "done"), (rf"^{p}:job:", "job"), (r"^celery-task-meta-", "task-meta"),
             (r"^/\d+\.celeryev/(worker\.heartbeat|worker\.online)", "celeryev/worker.heartbeat"),
             (r"^/\d+\.celeryev/", "celeryev"), (r"^unacked$", "unacked"), (r"^unacked_index$", "unacked_index"),
             (r"^unacked_mutex$", "unacked_mutex"), (r"^_kombu\.binding", "kombu-binding"),
             (rf"^{p}:worker:", "worker"), (rf"^{p}:stats:", "stats"), (rf"^{p}:batch(es$|:)", "batch"),
             (rf"^{p}:callbacks:", "callbacks"), (rf"^{p}:gateway:recent", "gateway:recent"),
             (rf"^{p}:gateway:wake", "gateway:wake"), (rf"^{p}:cancels$", "cancels"),
             (rf"^{p}:notify:", "notify"), (rf"^{p}:dlq$", "dlq"), (r"^rerankq:score:", "score"),
             (r":pending:msg$", "pending:msg"), (r":pending$", "pending"), (rf"^{p}\.", "queue")]
    return [(re.compile(pattern, re.S), kind) for pattern, kind in table]


@dataclass
class Phase:
    """One phase's share of a window: commands sent (``inferred`` of them not in the slowlog), commands its Lua
    scripts ran, and Redis's execution time of what it sent (µs, scripts' inner calls included)."""

    sent: int = 0
    inner: int = 0
    us: int = 0
    inferred: int = 0
    items: Counter[str] = field(default_factory=Counter)

    @property
    def executed(self) -> int:
        return self.sent + self.inner


@dataclass
class Split:
    """A window split by phase, with the checks that say how far to trust it."""

    phases: dict[str, Phase]
    unexplained: dict[str, int]  # commandstats counted more than the slowlog shows, and no rule says why
    mismatch: dict[str, int]  # the slowlog shows more than commandstats counted (should never happen)
    orphans: int  # Lua inner calls with no script after them
    unknown_process: int  # sent commands from connections no watched process held

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.phases.values())

    @property
    def executed(self) -> int:
        return sum(p.executed for p in self.phases.values())


class Attributor:
    """Splits a traced window by phase (see the module doc). ``prefix`` is the deployment's queue prefix."""

    def __init__(self, prefix: str) -> None:
        self.kinds = key_kinds(prefix)
        self.scripts = script_names()

    def kind(self, key: str) -> str:
        return next((kind for pattern, kind in self.kinds if pattern.search(key)), "other")

    def key_of(self, e: Entry) -> str:
        if e.cmd in ("EVALSHA", "EVAL") and len(e.args) > 3 and e.args[2] != "0":
            return e.args[3]
        return e.args[1] if len(e.args) > 1 else ""

    def label(self, e: Entry) -> str:
        """A short name of what the command did: ``EVALSHA observe``, ``HGET job``, ``PUBLISH celeryev/task.multi``."""
        if e.cmd == "EVALSHA":
            return f"EVALSHA {self.scripts.get(e.args[1] if len(e.args) > 1 else '', 'unknown script')}"
        if e.cmd in CONTAINERS_SHOWN or e.cmd in FOLLOWS or e.cmd in CONNECTION:
            return e.stat_name.upper()
        key = self.key_of(e)
        kind = self.kind(key)
        if kind == "celeryev":
            kind = "celeryev/" + key.split(".celeryev/", 1)[1].split(".")[0]
        return f"{e.cmd} {kind}"

    def split(self, window: Window, ports: ProcessPorts) -> Split:
        phases = {name: Phase() for name in PHASES}
        sent = [e for e in window.entries if not e.lua]
        roles = self._batch_connections(sent, ports)
        phase_of = self._phases(sent, ports, roles)
        inner: list[Entry] = []
        orphans = 0
        for e in window.entries:
            if e.lua:
                inner.append(e)
                continue
            p = phases[phase_of[e.id]]
            p.sent, p.us = p.sent + 1, p.us + e.us
            p.items[self.label(e)] += 1
            if inner and e.cmd not in ("EVALSHA", "EVAL", "FCALL"):
                orphans, inner = orphans + len(inner), []
            for i in inner:
                p.inner += 1
                p.items[f"{i.cmd} {self.kind(i.args[1] if len(i.args) > 1 else '')} (Lua)"] += 1
            inner = []
        unexplained, mismatch = infer(window, phases)
        unknown = sum(1 for e in sent if ports.label(e.addr) == "?")
        return Split(phases, unexplained, mismatch, orphans + len(inner), unknown)

    def _batch_connections(self, sent: list[Entry], ports: ProcessPorts) -> set[str]:
        """Connections of a batch runner: a worker's connections that touched a batch's keys."""
        return {e.addr for e in sent if ports.label(e.addr) == "worker" and self.kind(self.key_of(e)) == "batch"}

    def _phases(self, sent: list[Entry], ports: ProcessPorts, roles: set[str]) -> dict[int, str]:
        """Each sent command's phase, last to first, so that a command can take the phase of the next one on its
        connection."""
        out: dict[int, str] = {}
        following: dict[str, Entry] = {}  # connection -> the next command it sent
        for e in reversed(sent):
            after = following.get(e.addr)
            if e.cmd in FOLLOWS:
                out[e.id] = out[after.id] if after is not None else "other"
            else:
                out[e.id] = self.phase(e, ports.label(e.addr), e.addr in roles, after)
            following[e.addr] = e
        return out

    def phase(self, e: Entry, proc: str, batch: bool, after: Entry | None) -> str:
        """The phase of one sent command (``proc``: the process label; ``batch``: a batch runner's connection;
        ``after``: the next command on the same connection)."""
        if e.cmd in CONNECTION:
            return "connections"
        if e.cmd in ("EVALSHA", "EVAL"):
            name = self.scripts.get(e.args[1] if len(e.args) > 1 else "", "")
            if name == "create sent":  # the SDK's record, with its pending entry
                return "submit"
            if name == "create":  # a job's record (the SDK's keeps its JSON, "wire"; a worker's not) or a batch's
                return "submit" if "wire" in e.args or self.kind(self.key_of(e)) == "batch" else "accept"
            if name == "observe":
                return self._observe(e, proc, batch, after)
            if name in SCRIPT_PHASE:
                return SCRIPT_PHASE[name]
        return self._by_key(e, self.kind(self.key_of(e)), proc, batch)

    def _observe(self, e: Entry, proc: str, batch: bool, after: Entry | None) -> str:
        if proc == "worker":
            return "batch runner" if batch else "cancel check"
        read = after is not None and after.cmd == "HGETALL" and self.key_of(after) == self.key_of(e)
        return "client read" if read else "client wait"

    def _by_key(self, e: Entry, kind: str, proc: str, batch: bool) -> str:
        if kind == "batch" or (batch and kind == "job"):
            if proc == "worker":
                return "batch runner"
            return "client wait" if e.cmd in READS else "submit"  # a batch's record: read while waiting, or made
        if (e.cmd, kind) == ("ZADD", "unacked_index") and "XX" in (a.upper() for a in e.args[2:4]):
            return "leases"
        if (e.cmd, kind) == ("ZADD", "pending") and "NX" not in (a.upper() for a in e.args[2:4]):
            return "restore sweep"
        if (e.cmd, kind) == ("LLEN", "queue"):
            return "metrics" if proc == "worker" else "submit"
        if proc == "worker" and (e.cmd, kind) == ("HGET", "job"):
            return {"task_id": "accept", "state": "cancel check"}.get(e.args[2] if len(e.args) > 2 else "", "start")
        if (e.cmd, kind) in CMD_KIND:
            return CMD_KIND[e.cmd, kind]
        if kind.startswith("celeryev") and kind not in KIND:
            return "events"
        return KIND.get(kind, "other")



def infer(window: Window, phases: dict[str, Phase]) -> tuple[dict[str, int], dict[str, int]]:
    """Add what commandstats counted and the slowlog never shows to the phases: ``EXEC`` (one per ``MULTI``, in
    its phase) and blocking reads that timed out (spread like those seen, else to their usual phase). Returns
    (unexplained extra counts, counts where the slowlog saw more)."""
    seen: Counter[str] = Counter(e.stat_name for e in window.entries)
    unexplained: dict[str, int] = {}
    mismatch: dict[str, int] = {}
    for name in set(window.executed) | set(seen):
        extra = window.executed[name] - seen[name]
        if extra < 0:
            mismatch[name] = extra
        elif extra and name == "exec":
            _spread(phases, extra, {n: p.items["MULTI"] for n, p in phases.items()}, "EXEC (inferred)", "other")
        elif extra and name in BLOCKING:
            item = f"{name.upper()} (timed out, inferred)"
            weights = {n: sum(v for k, v in p.items.items() if k.startswith(name.upper() + " ")) for n, p in
                       phases.items()}
            _spread(phases, extra, weights, item, BLOCKING[name])
        elif extra:
            unexplained[name] = extra
            _spread(phases, extra, {}, f"{name.upper()} (commandstats only)", "other")
    return unexplained, mismatch


def _spread(phases: dict[str, Phase], extra: int, weights: dict[str, int], item: str, default: str) -> None:
    """``extra`` inferred commands over the phases in proportion to ``weights`` (largest remainder), or all to
    ``default`` when nothing weighs."""
    total = sum(weights.values())
    if not total:
        weights, total = {default: 1}, 1
    shares = {n: extra * w / total for n, w in weights.items() if w}
    counts = {n: int(s) for n, s in shares.items()}
    for n in sorted(shares, key=lambda n: shares[n] - counts[n], reverse=True)[:extra - sum(counts.values())]:
        counts[n] += 1
    for n, c in counts.items():
        if c:
            p = phases[n]
            p.sent, p.inferred = p.sent + c, p.inferred + c
            p.items[item] += c
