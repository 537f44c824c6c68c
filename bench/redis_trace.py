"""What a private Redis did in a window of time, for ``bench.redis_cost``.

- every command a client *sent*, with Redis's own timing of it, its arguments and the client's address: the
  slowlog at threshold 0 (``CONFIG SET slowlog-log-slower-than 0``). The commands a Lua script runs are logged
  too, each just before its script (client ``?:0``); Redis does not log ``EXEC``, nor (7.0) a blocking
  command that timed out;
- every command Redis *executed*, Lua's inner calls included: ``INFO commandstats``;
- Redis's CPU: ``used_cpu_user + used_cpu_sys`` (``INFO cpu``).

A window opens with one transaction (slowlog reset, CPU read, ``CONFIG RESETSTAT``) and closes with another
(counters and slowlog read together), so nothing another client sends falls between the readings. The bench's
own commands are left out: its connection has a name of its own, and what commandstats counts of it is known
(``Window.own``). ``ProcessPorts`` tells which process holds each client connection (Linux ``/proc``).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

STATS_NAME = "rerankq-costbench"
SLOWLOG_MAX = 5_000_000
CONTAINERS = {"SCRIPT", "CLIENT", "CONFIG", "COMMAND", "OBJECT", "MEMORY", "SLOWLOG", "LATENCY", "ACL", "MODULE",
              "PUBSUB", "XGROUP", "XINFO", "FUNCTION", "CLUSTER"}


def text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass
class Entry:
    """One slowlog entry: a command as Redis ran it (``us``: its own timing, a script's inner calls included)."""

    id: int
    us: int
    args: list[str]
    addr: str
    name: str

    @property
    def cmd(self) -> str:
        return self.args[0].upper() if self.args else "?"

    @property
    def stat_name(self) -> str:
        """The command's name in ``INFO commandstats`` (``script|exists`` for a subcommand)."""
        if self.cmd in CONTAINERS and len(self.args) > 1:
            return f"{self.cmd.lower()}|{self.args[1].lower()}"
        return self.cmd.lower()

    @property
    def lua(self) -> bool:
        """Run by a Lua script (Redis logs its fake client as ``?:0``), not sent by a client."""
        return self.addr.startswith("?")


@dataclass
class Window:
    """What Redis did between ``open`` and ``close``; ``entries`` in the order Redis ran them, the bench's own left
    out; ``executed`` from commandstats, the bench's own (``own``) taken off."""

    seconds: float = 0.0
    cpu_us: float = 0.0
    executed: Counter[str] = field(default_factory=Counter)
    entries: list[Entry] = field(default_factory=list)
    slowlog_full: bool = False

    @property
    def executed_total(self) -> int:
        return sum(self.executed.values())


class Recorder:
    """Opens and closes windows on one Redis through a connection of the bench's own (``STATS_NAME``)."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, client_name=STATS_NAME, protocol=2)
        self.redis.config_set("slowlog-max-len", SLOWLOG_MAX)
        self.trace(False)
        self.own: Counter[str] = Counter()
        self._t0 = self._cpu0 = 0.0

    def trace(self, on: bool) -> None:
        """Log every command (threshold 0 µs) or none (-1)."""
        self.redis.config_set("slowlog-log-slower-than", 0 if on else -1)

    def open(self) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.execute_command("SLOWLOG", "RESET")
        pipe.execute_command("INFO", "cpu")
        pipe.execute_command("CONFIG", "RESETSTAT")
        _, info, _ = pipe.execute()
        self._t0, self._cpu0 = time.monotonic(), _cpu(info)
        # Counted by commandstats after the reset: the reset itself, this EXEC, the MULTI that closes the window.
        self.own = Counter({"config|resetstat": 1, "exec": 1, "multi": 1})

    def unacked(self) -> int:
        """Messages workers hold (kombu's ``unacked``); counted as the bench's own."""
        self.own["hlen"] += 1
        return int(self.redis.hlen("unacked"))

    def close(self, traced: bool) -> Window:
        pipe = self.redis.pipeline(transaction=True)
        pipe.execute_command("INFO", "cpu", "commandstats")
        pipe.execute_command("SLOWLOG", "GET", "-1")
        info, raw = pipe.execute()
        seconds = time.monotonic() - self._t0
        executed: Counter[str] = Counter()
        for name, value in info.items():
            if name.startswith("cmdstat_"):
                executed[name.removeprefix("cmdstat_")] = int(value["calls"])
        executed.subtract(self.own)
        entries = [e for e in (_entry(r) for r in raw) if e.name != STATS_NAME] if traced else []
        entries.sort(key=lambda e: e.id)
        return Window(seconds, 1e6 * (_cpu(info) - self._cpu0), +executed, entries, len(raw) >= SLOWLOG_MAX)

    def close_client(self) -> None:
        self.trace(False)
        self.redis.close()


def _cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _entry(raw: list[Any]) -> Entry:
    # id, timestamp, duration (µs), arguments, client address, client name (Redis >= 4)
    return Entry(int(raw[0]), int(raw[2]), [text(a) for a in raw[3]], text(raw[4]), text(raw[5]))


class ProcessPorts:
    """Which process holds each client connection to the Redis on ``port``: the local port of every socket of
    the watched processes (and their children), read from ``/proc`` every ``interval`` seconds while running
    (a connection opened and closed between two readings stays unknown). Linux only; elsewhere all unknown."""

    def __init__(self, redis_port: int, interval: float = 0.2) -> None:
        self.redis_port = redis_port
        self.interval = interval
        self.pids: dict[int, str] = {}
        self.labels: dict[int, str] = {}  # client's local port -> process label
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int, label: str) -> None:
        self.pids[pid] = label

    def label(self, addr: str) -> str:
        port = addr.rpartition(":")[2]
        return self.labels.get(int(port), "?") if port.isdigit() else "?"

    def sample(self) -> None:
        inodes = _socket_ports(self.redis_port)
        if not inodes:
            return
        for pid, label in list(self.pids.items()):
            for child in [pid, *_children(pid)]:
                for inode in _socket_inodes(child):
                    if inode in inodes:
                        self.labels[inodes[inode]] = label

    def __enter__(self) -> ProcessPorts:
        self._stop.clear()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="costbench-ports", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def _socket_ports(redis_port: int) -> dict[int, int]:
    """Socket inode -> local port, for the TCP connections whose other end is ``redis_port``."""
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, inode = cols[1], cols[2], int(cols[9])
            if int(remote.rpartition(":")[2], 16) == redis_port:
                out[inode] = int(local.rpartition(":")[2], 16)
    return out


def _socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return out
