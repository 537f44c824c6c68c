"""The batch record: a JSONL file of rerank jobs in, JSONL parts out (``rerankq.client.batches`` runs it).

One Redis hash per batch (``rerankq.keys.batch_key``), listed by creation time in ``batches_key``:

    validating ──▶ in_progress ──▶ finalizing ──▶ completed
        │               ├──cancel──▶ cancelling ──▶ cancelled
        │               └──completion window passed──▶ expired
        └──input unreadable──▶ failed

Counts are by outcome of the input lines: ``total`` (lines in the input, known once validated), ``queued`` and
``running`` (jobs in flight, as last seen), ``succeeded``, ``failed`` (invalid lines included), ``cancelled``,
``expired``; every line ends in exactly one of the last four, written to exactly one output part line.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import redis

from rerankq import keys
from rerankq.errors import NoSuchJob
from rerankq.jobs import text_of
from rerankq.settings import Settings


class BatchState(StrEnum):
    """Where a batch is in its life."""

    VALIDATING = "validating"
    """Accepted; a runner is reading the input for the first time (counting its lines)."""
    IN_PROGRESS = "in_progress"
    """Its jobs are being enqueued and scored; finished lines are written to output parts as they end."""
    FINALIZING = "finalizing"
    """Every line has ended; the last parts and the manifest are being written."""
    COMPLETED = "completed"
    """Every input line has its output or error line; ``manifest.json`` lists the parts."""
    CANCELLING = "cancelling"
    """Cancel asked; jobs in flight are being cancelled, finished results are kept."""
    CANCELLED = "cancelled"
    """Cancelled; lines that had not finished have error lines (``cancelled``)."""
    EXPIRED = "expired"
    """Its completion window passed; lines that had not finished have error lines (``expired``)."""
    FAILED = "failed"
    """The input could not be read; ``error`` says why."""

    @property
    def terminal(self) -> bool:
        return self in (BatchState.COMPLETED, BatchState.CANCELLED, BatchState.EXPIRED, BatchState.FAILED)


BATCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,95}$"  # its jobs are {batch_id}-{line}: job ids
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str | float) -> float:
    """A completion window: seconds, or ``90s``, ``30m``, ``24h``, ``2d`` → seconds (``ValueError`` if not)."""
    if isinstance(text, int | float):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 3600, 90m, 24h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


COUNTS = ("total", "queued", "running", "succeeded", "failed", "cancelled", "expired")


@dataclass
class BatchRecord:
    """A batch as stored. ``to_dict`` is what ``rerankq batch status --json`` prints."""

    batch_id: str
    state: BatchState
    input_uri: str
    output_uri: str
    created_at: float
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    cancelled_at: float | None = None
    error: str | None = None
    priority: str = "low"
    model: str | None = None
    callback_url: str | None = None
    npy: bool = False  # also write each results part's vectors as .npy (``rerankq.client.batches.vectors``)
    pairs_done: int = 0
    parts: dict[str, int] = field(default_factory=lambda: {"results": 0, "errors": 0})

    @classmethod
    def from_hash(cls, batch_id: str, raw: dict[Any, Any]) -> BatchRecord:
        data = {text_of(k): text_of(v) for k, v in raw.items()}

        def num(name: str) -> float | None:
            return float(data[name]) if data.get(name) else None

        return cls(batch_id=batch_id, state=BatchState(data["state"]), input_uri=data.get("input_uri", ""),
                   output_uri=data.get("output_uri", ""), created_at=num("created_at") or 0.0,
                   counts={c: int(data.get(f"n_{c}", 0)) for c in COUNTS}, started_at=num("started_at"),
                   finished_at=num("finished_at"), expires_at=num("expires_at"), cancelled_at=num("cancelled_at"),
                   error=data.get("error"), priority=data.get("priority", "low"), model=data.get("model") or None,
                   callback_url=data.get("callback_url") or None, npy=data.get("npy") == "1",
                   pairs_done=int(data.get("pairs_done", 0)),
                   parts={"results": int(data.get("parts_results", 0)), "errors": int(data.get("parts_errors", 0))})

    @property
    def done(self) -> int:
        """Lines that have ended (in any way)."""
        return sum(self.counts[c] for c in ("succeeded", "failed", "cancelled", "expired"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        return out


# ARGV: ttl, then field/value pairs. 1 when created, 0 when the id exists (a resubmit adds nothing).
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# ARGV: now. The state before; in_progress/validating become cancelling.
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if state == 'validating' or state == 'in_progress' then
  redis.call('HSET', KEYS[1], 'state', 'cancelling', 'cancelled_at', ARGV[1])
end
return state
"""

# ARGV: expected states (comma separated), new state, then field/value pairs. The state before.
_MOVE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if string.find(',' .. ARGV[1] .. ',', ',' .. state .. ',', 1, true) then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], unpack(ARGV, 3))
end
return state
"""


class BatchStore:
    """Reads and writes batch records."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self._create = client.register_script(_CREATE)
        self._cancel = client.register_script(_CANCEL)
        self._move = client.register_script(_MOVE)

    def key(self, batch_id: str) -> str:
        return keys.batch_key(self.settings, batch_id)

    def create(self, record: BatchRecord) -> bool:
        """Create the record; False when the id exists already."""
        fields = {"state": record.state.value, "input_uri": record.input_uri, "output_uri": record.output_uri,
                  "created_at": record.created_at, "expires_at": record.expires_at, "priority": record.priority,
                  "model": record.model, "callback_url": record.callback_url, "npy": 1 if record.npy else None}
        args = [x for k, v in fields.items() if v is not None for x in (k, v)]
        pipe = self.redis.pipeline(transaction=False)
        self._create(keys=[self.key(record.batch_id)], args=[self.settings.batches.retention_s, *args], client=pipe)
        pipe.zadd(keys.batches_key(self.settings), {record.batch_id: record.created_at}, nx=True)
        return bool(pipe.execute()[0])

    def get(self, batch_id: str) -> BatchRecord:
        raw = self.redis.hgetall(self.key(batch_id))
        if not raw:
            raise NoSuchJob(batch_id, what="batch")
        return BatchRecord.from_hash(batch_id, raw)

    def list(self, limit: int = 20) -> list[BatchRecord]:
        """The newest batches first (expired records are dropped from the index as they are met)."""
        ids = [text_of(i) for i in self.redis.zrevrange(keys.batches_key(self.settings), 0, limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hgetall(self.key(batch_id))
        out, gone = [], []
        for batch_id, raw in zip(ids, pipe.execute(), strict=True):
            (out.append(BatchRecord.from_hash(batch_id, raw)) if raw else gone.append(batch_id))
        if gone:
            self.redis.zrem(keys.batches_key(self.settings), *gone)
        return out

    def cancel(self, batch_id: str) -> str:
        state = self._cancel(keys=[self.key(batch_id)], args=[time.time()])
        if state is None:
            raise NoSuchJob(batch_id, what="batch")
        return text_of(state)

    def move(self, batch_id: str, expected: tuple[BatchState, ...], state: BatchState, **fields: Any) -> str | None:
        """Move to ``state`` if the batch is in one of ``expected``; returns the state it was in."""
        args = [x for k, v in fields.items() if v is not None for x in (k, v)]
        before = self._move(keys=[self.key(batch_id)], args=[",".join(expected), state.value, *args])
        return None if before is None else text_of(before)

    def set_counts(self, batch_id: str, counts: dict[str, int], pipe: Any = None, **fields: Any) -> None:
        """Write counts (and other fields) of a batch; in ``pipe`` when given."""
        target = pipe if pipe is not None else self.redis
        mapping: dict[Any, Any] = {f"n_{c}": n for c, n in counts.items()}
        mapping.update({k: v for k, v in fields.items() if v is not None})
        target.hset(self.key(batch_id), mapping=mapping)
