"""Lua scripts run by their hash (``EVALSHA``) without asking the server about them first.

redis-py's ``register_script`` sends ``SCRIPT EXISTS`` before every pipeline that holds a script: one more
command and one more round trip per pipeline, on the hottest paths (every job is created, started and ended
by a script). Here a script is sent by hash only; when the server answers ``NOSCRIPT`` (it restarted, or a
failover promoted a replica that never ran it), the scripts are loaded and just those calls are sent again.
A call that met ``NOSCRIPT`` ran nothing, so sending it again cannot do anything twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

ScriptCall = Callable[..., Any]


class Scripts:
    """The scripts of one client: ``register`` each once, call them like redis-py's ``Script`` objects
    (``keys=``, ``args=``, ``client=`` a pipeline or nothing), and run pipelines with ``execute``."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.bodies: dict[str, str] = {}

    def register(self, body: str) -> ScriptCall:
        sha = hashlib.sha1(body.encode()).hexdigest()
        self.bodies[sha] = body

        def call(keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
            target = self.client if client is None else client
            if target is not self.client:  # a pipeline: NOSCRIPT is handled by ``execute``
                return target.evalsha(sha, len(keys), *keys, *args)
            try:
                return target.evalsha(sha, len(keys), *keys, *args)
            except NoScriptError:
                self.client.script_load(body)
                return target.evalsha(sha, len(keys), *keys, *args)

        return call

    def execute(self, pipe: Any) -> list[Any]:
        """Run ``pipe``; calls that met ``NOSCRIPT`` are sent again once the scripts are loaded. Raises the
        first error any command met, as ``Pipeline.execute`` does."""
        stack = [command[0] for command in pipe.command_stack]
        out = list(pipe.execute(raise_on_error=False))
        lost = [i for i, reply in enumerate(out) if isinstance(reply, NoScriptError)]
        if lost:
            for sha in {stack[i][1] for i in lost}:
                self.client.script_load(self.bodies[sha])
            again = self.client.pipeline(transaction=False)
            for i in lost:
                again.execute_command(*stack[i])
            for i, reply in zip(lost, again.execute(raise_on_error=False), strict=True):
                out[i] = reply
        for reply in out:
            if isinstance(reply, Exception):
                raise reply
        return out
