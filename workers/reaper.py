"""The reaper: messages lost on their way to a worker are sent again.

Leases cover a message a worker holds (``rerankq.worker.leases``). Two moments are not covered by them: between the
SDK creating a job's record and publishing its message (the producer dies, or a failover loses the publish),
and between kombu's ``BRPOP`` taking a message off its queue and its write to ``unacked`` (the worker dies
in that instant: the message is nowhere). Both leave a record ``queued`` with no message anywhere.

So every queue has a pending set (``rerankq.keys.pending_key``): the SDK adds a job's id when it creates the
record, taking a message removes it in the same round trip that marks it held, putting one back adds it again
(``rerankq.worker.transport``). An id in the pending set of a queue that is *empty* is in no queue and held by no
worker: its message is lost. The reaper, run on the lease beat of every worker for its own queues, marks
such ids on one beat and sends those still there on a later one (a worker that was taking the message then
has long since written it held), from the message itself when it was put back, or from the job JSON the record
keeps until it ends. A queue that is never empty is not reaped: a lost message there waits until it drains.
Whatever it sends twice in a race the job record's fencing runs once (``rerankq.jobs``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
from kombu.utils.uuid import uuid
from redis.exceptions import NoScriptError

from rerankq import keys
from rerankq.jobs import TERMINAL, as_state, text_of, unpack_job
from rerankq.settings import Settings
from rerankq.worker.metrics import Metrics

logger = logging.getLogger(__name__)
PRIORITY_SEP, PRIORITY_STEPS = "\x06\x16", (3, 6, 9)  # kombu's lists for messages with a priority

# KEYS: five per queue: its pending set, its list, its three priority lists (kombu's). ARGV: now, grace (s),
# confirm (s). Returns, per queue, the ids found lost: old entries of an empty queue are marked (score -now) on
# one call and returned on a later one, their entry renewed as if just sent (a reaper that dies before resending
# leaves them to the next one). O(1) per queue when nothing is old: one ZRANGEBYSCORE LIMIT 1; the lists are
# looked at, and the old entries read, only when there is one (a queue never empty costs one LLEN more).
_REAP = """
local now, grace, confirm = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for q = 1, #KEYS, 5 do
  local lost = {}
  if #redis.call('ZRANGEBYSCORE', KEYS[q], '-inf', now - grace, 'LIMIT', 0, 1) > 0 then
    local empty = true
    for i = q + 1, q + 4 do
      if redis.call('LLEN', KEYS[i]) > 0 then empty = false break end
    end
    if empty then
      local old = redis.call('ZRANGEBYSCORE', KEYS[q], '-inf', now - grace, 'WITHSCORES', 'LIMIT', 0, 500)
      for i = 1, #old, 2 do
        local id, score = old[i], tonumber(old[i + 1])
        if score >= 0 then
          redis.call('ZADD', KEYS[q], -now, id)
        elseif now + score >= confirm then
          redis.call('ZADD', KEYS[q], now, id)
          table.insert(lost, id)
        end
      end
    end
  end
  out[#out + 1] = lost
end
return out
"""


class Reaper:
    """Finds and resends lost messages of ``queues``: a part of every lease beat (``add``, ``done``: one script
    call for all the queues, in the beat's round trip), or on its own (``__call__``)."""

    def __init__(self, settings: Settings, client: redis.Redis, queues: list[str], metrics: Metrics,
                 send: Any) -> None:
        self.settings = settings
        self.redis = client
        self.queues = queues
        self.metrics = metrics
        self.send = send  # send(job JSON, task id, queue): publish a rerankq.rerank message (the Celery app's)
        self._reap = client.register_script(_REAP)
        self._keys = [key for queue in queues for key in (keys.pending_key(queue), queue,
                                                          *(f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS))]
        self.grace_s = float(settings.lease_s)
        self.confirm_s = max(settings.lease_s / 6, 1.0)

    def __call__(self) -> None:
        self._resend_lost(self._reap(keys=self._keys, args=self._args()))

    def add(self, pipe: Any) -> int:
        """Queue this beat's script call on the beat's pipeline (by hash: no SCRIPT EXISTS)."""
        pipe.evalsha(self._reap.sha, len(self._keys), *self._keys, *self._args())
        return 1

    def done(self, replies: list[Any]) -> None:
        (reply,) = replies
        if isinstance(reply, NoScriptError):  # a restarted Redis: run it again, loading the script
            reply = self._reap(keys=self._keys, args=self._args())
        elif isinstance(reply, Exception):
            raise reply
        self._resend_lost(reply)

    def _args(self) -> list[float]:
        return [time.time(), self.grace_s, self.confirm_s]

    def _resend_lost(self, reply: list[list[Any]]) -> None:
        for queue, lost in zip(self.queues, reply, strict=True):
            for task_id in lost:
                self.resend(queue, text_of(task_id))

    def resend(self, queue: str, task_id: str) -> bool:
        """Send one lost message again; False when there is nothing to send (the job ended, or is gone)."""
        stored = self.redis.hget(keys.pending_msg_key(queue), task_id)
        if stored is not None:
            payload = json.loads(stored)
            payload.setdefault("properties", {})["delivery_tag"] = uuid()
            self.redis.rpush(queue, json.dumps(payload))  # the front of the queue: it was next when it was lost
        else:
            state, wire = self.redis.hmget(keys.job_key(self.settings, task_id), ["state", "wire"])
            if as_state(None if state is None else text_of(state)) in TERMINAL or not wire:  # ended, gone, not SDK's
                self.redis.zrem(keys.pending_key(queue), task_id)  # nothing left to do for it
                return False
            self.send(unpack_job(wire), task_id, queue)
        self.metrics.messages_resent.inc()
        logger.warning("queue %s: message %s was lost on its way to a worker (a producer or worker died); sent "
                       "it again", queue, task_id)
        return True
