"""Completion callbacks: the event, its signature, the URL policy, and the outbox in Redis.

When a job with a ``callback_url`` ends (succeeded, failed, cancelled, expired: whoever ends it), the Lua
script that writes its terminal state also writes its event to the outbox (``rerankq.jobs``), so no ended job
lacks its event, even if the process that ended it dies the next instant. Other producers of events (a batch
that ends) call ``Outbox.enqueue`` inside their own transaction. Deliverers (``rerankq.worker.callbacks``, a thread in
every worker) claim due events with a lease, POST them, and retry with exponential backoff: at least once.

Outbox (keys in ``rerankq.keys.callback_keys``): a zset of event ids by due time, a hash of events (JSON; the
attempts and last error beside them), and a capped list of dropped events. Claiming an event moves its due
time ``callbacks.visibility_s`` ahead, so the claims of a deliverer that dies come back by themselves.

The body POSTed: ``{"id", "type", "created_at", "data"}``; for a job, ``type`` is ``job.<state>`` and ``data``
its status plus its ``result`` (inline when Redis holds it inline) or ``result_uri`` (when it lies in S3).
Signed like Stripe's webhooks: ``Rerankq-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
"<t>." + body)>``; receivers check it with ``verify_signature`` and dedupe on the event id.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis

from rerankq import keys
from rerankq.errors import CallbackRefused, SignatureError, TransientError
from rerankq.jobs import JobRecord, text_of
from rerankq.netguard import Resolve, address_refusal, host_allowed, literal_address, system_resolve
from rerankq.settings import CallbackSettings, Settings, knob

SIGNATURE_HEADER = "Rerankq-Signature"
EVENT_ID_HEADER = "Rerankq-Event-Id"
EVENT_TYPE_HEADER = "Rerankq-Event-Type"
ATTEMPT_HEADER = "Rerankq-Delivery-Attempt"
MAX_URL_CHARS = 2048
KEEP_DROPPED = 1000


# signing -----------------------------------------------------------------------------------------
def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``Rerankq-Signature`` header value for ``body``: ``t=<unix seconds>,v1=<hex digest>``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify_signature(secret: str, header: str | None, body: bytes, tolerance_s: float = 300.0,
                     now: float | None = None) -> int:
    """Check a callback as its receiver: ``header`` is the ``Rerankq-Signature`` value, ``body`` the raw request
    body (bytes, before any JSON parsing). Returns the signed timestamp; raises ``SignatureError`` when the header
    is malformed, its timestamp is more than ``tolerance_s`` from ``now`` (a replay, or a skewed clock), or no
    ``v1`` signature matches. Reject replays within the tolerance by remembering event ids you have seen."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    pairs = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for name, _, value in pairs if name == "t"]
    signatures = [value for name, _, value in pairs if name == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header (expected t=<seconds>,v1=<hex>)")
    timestamp = int(stamps[0])
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance_s:
        raise SignatureError(f"timestamp {timestamp} is {age:.0f} s from now, outside the tolerance of "
                             f"{tolerance_s:g} s (a replay, or a clock off)")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise SignatureError("no v1 signature matches the body (wrong secret, or the body was altered)")
    return timestamp


# the URL policy ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where a callback goes: the checked address ``ip`` (None until resolved) of ``host``."""

    scheme: str
    host: str
    port: int
    path: str
    ip: str | None = None


def check_url(url: str, policy: CallbackSettings) -> Target:
    """The static checks (no DNS): scheme, no credentials, the host allow-list, and a literal IP address's
    kind. Raises ``CallbackRefused`` with the reason and the setting that would change it."""
    if len(url) > MAX_URL_CHARS:
        raise CallbackRefused(f"{len(url)} characters, over the limit {MAX_URL_CHARS}")
    parts = urlsplit(url)
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in schemes:
        hint = "" if policy.allow_http else f"; http:// only with {knob('callbacks.allow_http')}"
        raise CallbackRefused(f"{url!r} must be an https:// URL{hint}")
    if parts.username or parts.password:
        raise CallbackRefused("credentials in the URL are refused (the signature authenticates rerankq)")
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        raise CallbackRefused(f"no host in {url!r}")
    if not policy.allowed_hosts:
        raise CallbackRefused(f"no callback hosts are allowed: list them in {knob('callbacks.allowed_hosts')} "
                              "(or * for any public host)")
    if not host_allowed(host, policy.allowed_hosts):
        raise CallbackRefused(f"host {host!r} is not on the allow-list ({knob('callbacks.allowed_hosts')})")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise CallbackRefused(f"bad port in {url!r}") from None
    ip = literal_address(host)
    if ip is not None:
        _check_address(host, ip, policy)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, ip)


def _check_address(host: str, ip: str, policy: CallbackSettings) -> None:
    if not policy.allow_private and (reason := address_refusal(ip)):
        what = reason if literal_address(host) else f"host {host!r} resolves to a {reason}"
        raise CallbackRefused(f"{what}: refused (allowed with {knob('callbacks.allow_private')})")


def check_target(url: str, policy: CallbackSettings, resolve: Resolve = system_resolve,
                 unresolved_refused: bool = False) -> Target:
    """``check_url``, then the host's addresses (every one must pass): the target with the address to connect
    to. A name that does not resolve is ``CallbackRefused`` with ``unresolved_refused`` (at submit), else a
    ``TransientError`` like any failed lookup (at delivery: DNS may come back)."""
    target = check_url(url, policy)
    if target.ip is not None:
        return target
    try:
        addresses = resolve(target.host, target.port)
    except socket.gaierror as exc:
        unknown = exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None))
        if unknown and unresolved_refused:
            raise CallbackRefused(f"host {target.host!r} does not resolve") from None
        raise TransientError(f"DNS lookup of {target.host!r} failed ({exc})") from None
    if not addresses:
        raise TransientError(f"host {target.host!r} has no address")
    for ip in addresses:  # all of them: a name with one internal address is not trusted at all
        _check_address(target.host, ip, policy)
    return Target(target.scheme, target.host, target.port, target.path, addresses[0])


# events ------------------------------------------------------------------------------------------
@dataclass
class CallbackEvent:
    """One event as a deliverer holds it: what to POST where, and how it went so far."""

    id: str
    url: str
    type: str
    created_at: float
    data: dict[str, Any]
    attempts: int = 0  # this claim included
    last_error: str | None = None

    def body(self) -> bytes:
        """The JSON body POSTed (the signature covers these exact bytes)."""
        event = {"id": self.id, "type": self.type, "created_at": self.created_at, "data": self.data}
        return json.dumps(event, separators=(",", ":")).encode()


def job_data(stored: dict[str, Any], job_prefix: str) -> dict[str, Any]:
    """A job event's ``data`` from the record snapshot the terminal script stored: its status, and its result
    (inline) or ``result_uri``."""
    record = JobRecord.from_hash(str(stored["key"]).removeprefix(job_prefix), stored.get("job") or {})
    data = record.status()
    if record.result_uri:
        data["result_uri"] = record.result_uri
    elif record.result:
        data["result"] = json.loads(record.result)
    return data


# Claim due events. KEYS: due, events. ARGV: now, hidden until, limit. {id, event, attempts, last error} each.
_CLAIM = """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))) do
  local event = redis.call('HGET', KEYS[2], id)
  if event then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    local n = redis.call('HINCRBY', KEYS[2], id .. '#n', 1)
    table.insert(out, {id, event, n, redis.call('HGET', KEYS[2], id .. '#err') or ''})
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# Try again later. KEYS: due, events. ARGV: id, due time, error. 0 when the event is gone (delivered meanwhile).
_RETRY = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1] .. '#err', ARGV[3])
return 1
"""

# Give up. KEYS: due, events, dropped. ARGV: id, the dropped entry (JSON), entries kept.
_DROP = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1], ARGV[1] .. '#n', ARGV[1] .. '#err')
redis.call('LPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[3]) - 1)
return 1
"""


class Outbox:
    """The callback outbox in Redis: ``enqueue`` events; deliverers ``claim``, then settle each claim with
    ``delivered``, ``retry`` or ``drop``."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client
        self.due, self.events, self.dropped_key = keys.callback_keys(settings)
        self._job_prefix = keys.job_key(settings, "")
        self._claim, self._retry, self._drop = (client.register_script(s) for s in (_CLAIM, _RETRY, _DROP))

    def enqueue(self, pipe_or_client: Any, url: str, event_type: str, payload: dict[str, Any],
                event_id: str | None = None, now: float | None = None) -> str:
        """Add an event (``payload`` becomes its ``data``) and return its id. Pass your pipeline (a
        ``MULTI`` transaction, or inside your Lua-free write) to write it atomically with your own state change;
        a plain client writes it in a transaction of its own. The URL gets ``check_url``'s checks."""
        check_url(url, self.settings.callbacks)
        event_id = event_id or f"evt_{uuid.uuid4().hex}"
        now = time.time() if now is None else now
        stored = json.dumps({"id": event_id, "url": url, "type": event_type, "created_at": now, "data": payload},
                            separators=(",", ":"))
        own = not isinstance(pipe_or_client, redis.client.Pipeline)
        pipe = pipe_or_client.pipeline(transaction=True) if own else pipe_or_client
        pipe.hset(self.events, event_id, stored)
        pipe.zadd(self.due, {event_id: now}, nx=True)
        if own:
            pipe.execute()
        return event_id

    def claim(self, limit: int, now: float | None = None) -> list[CallbackEvent]:
        """Up to ``limit`` due events, hidden from other deliverers for ``callbacks.visibility_s``."""
        now = time.time() if now is None else now
        hidden = now + self.settings.callbacks.visibility_s
        found = self._claim(keys=[self.due, self.events], args=[now, hidden, limit])
        events = []
        for event_id, stored, n, err in found:
            try:
                events.append(self._event(text_of(stored), int(n), text_of(err) or None))
            except (ValueError, KeyError, TypeError) as exc:  # written by something else: never deliverable
                unreadable = CallbackEvent(text_of(event_id), "", "unknown", now, {}, int(n))
                self.drop(unreadable, f"unreadable event ({type(exc).__name__}: {exc}): {text_of(stored)[:200]}")
        return events

    def _event(self, text: str, attempts: int, last_error: str | None) -> CallbackEvent:
        stored = json.loads(text)
        data = job_data(stored, self._job_prefix) if "job" in stored else stored["data"]
        return CallbackEvent(str(stored["id"]), str(stored["url"]), str(stored["type"]),
                             float(stored["created_at"]), data, attempts, last_error)

    def delivered(self, event: CallbackEvent) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.due, event.id)
        pipe.hdel(self.events, event.id, f"{event.id}#n", f"{event.id}#err")
        pipe.execute()

    def retry(self, event: CallbackEvent, error: str, delay_s: float, now: float | None = None) -> bool:
        """Due again in ``delay_s``; False when the event is gone (another claim delivered it)."""
        due = (time.time() if now is None else now) + delay_s
        return bool(self._retry(keys=[self.due, self.events], args=[event.id, due, error]))

    def drop(self, event: CallbackEvent, reason: str) -> bool:
        """Give up on the event; it is kept, with ``reason``, among the last ``KEEP_DROPPED`` dropped events."""
        entry = json.dumps({"id": event.id, "url": event.url, "type": event.type, "created_at": event.created_at,
                            "attempts": event.attempts, "last_error": reason, "dropped_at": time.time()})
        return bool(self._drop(keys=[self.due, self.events, self.dropped_key], args=[event.id, entry, KEEP_DROPPED]))

    def depth(self) -> int:
        """Events not yet delivered or dropped (in flight included)."""
        return int(self.redis.zcard(self.due))

    def dropped(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recently dropped events, newest first, each with its ``last_error``."""
        return [json.loads(text_of(x)) for x in self.redis.lrange(self.dropped_key, 0, limit - 1)]
