"""The worker's task events (``rerankq.worker.events``) through the worker's own Celery app and transport, against a
real Redis, read by a pub/sub subscriber as Flower subscribes: held while nobody listens, none lost once
someone does."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import redis

from rerankq.settings import Settings
from rerankq.worker.app import make_app
from rerankq.worker.events import DrainingDispatcher


def _events(pubsub: Any, wait_s: float) -> list[tuple[str, str]]:
    """(type, uuid) of every event that arrives within ``wait_s`` seconds, in order."""
    out: list[tuple[str, str]] = []
    deadline = time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is None or message["type"] != "pmessage":
            continue
        body = json.loads(base64.b64decode(json.loads(message["data"])["body"]))
        out += [(event["type"], event.get("uuid", "")) for event in (body if isinstance(body, list) else [body])]
    return out


def test_task_events_are_held_while_nobody_listens_and_all_sent_once_someone_does(redis_url: str) -> None:
    app = make_app(Settings(redis_url=redis_url))
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="w1@test", buffer_group=["task"])
        assert isinstance(dispatcher, DrainingDispatcher)
        dispatcher.send("task-received", uuid="a")
        dispatcher.flush()  # published, and heard by nobody
        dispatcher.send("task-started", uuid="a")
        dispatcher.flush()  # held: nobody listened a moment ago

        pubsub = redis.Redis.from_url(redis_url).pubsub()
        pubsub.psubscribe("*celeryev/*")  # as Flower's event receiver does
        assert pubsub.get_message(timeout=5)["type"] == "psubscribe"
        dispatcher.send("task-succeeded", uuid="a")
        dispatcher.flush()
        assert _events(pubsub, 0.5) == []  # still held: the worker does not know yet that someone listens

        dispatcher.send("worker-heartbeat")  # heard: what was held goes out at once, in order
        assert _events(pubsub, 2) == [("worker-heartbeat", ""), ("task-started", "a"), ("task-succeeded", "a")]
        dispatcher.send("task-received", uuid="b")
        dispatcher.flush()  # someone listens: sent on the flush
        assert _events(pubsub, 2) == [("task-received", "b")]
        pubsub.close()
