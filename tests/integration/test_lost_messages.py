"""Messages lost on their way to a worker are sent again (``rerankq.worker.reaper``), with real processes: a private
``redis-server``, ``rerankq worker`` processes with the fake scorer and a 3 s lease.

The two moments leases cannot cover are reproduced exactly: a worker that died between kombu's ``BRPOP`` and
its write to ``unacked`` is a message popped off its queue and then nowhere; a producer that died between
creating the record and publishing is a record with no message. The pending-set bookkeeping of kombu's
transport (take, put back) is checked through kombu itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from rerankq import keys
from rerankq.cli.cluster import S3Server
from rerankq.worker.transport import Transport
from tests.chaos_kit import Audit, Cluster, Redis, Reference, check_scores, settle, text_job

pytestmark = pytest.mark.slow


@pytest.fixture()
def chaos(private_redis: Redis, s3_server: S3Server, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(private_redis.url, s3_server.url, tmp_path)
    yield c
    c.close()


def test_messages_lost_in_a_take_or_before_publishing_are_sent_again(chaos: Cluster) -> None:
    client, r = chaos.client(), chaos.redis()
    jobs = {f"lost-{i}": text_job(i, 2, "lost", job_id=f"lost-{i}") for i in range(6)}
    ids = client.submit_many([jobs[f"lost-{i}"] for i in range(4)])
    queue = keys.queue_name(chaos.settings, "normal")
    for _ in range(2):  # a worker that died right after BRPOP: two messages off the queue, held nowhere
        assert r.rpop(queue) is not None
    # a producer that died between creating the records and publishing their messages
    unpublished = [jobs["lost-4"], jobs["lost-5"]]
    assert client.jobs.create_many(unpublished, sent=True) == [True, True]
    ids += ["lost-4", "lost-5"]
    assert r.zcard(keys.pending_key(queue)) == 6  # two in the queue, two popped, two never sent

    t0 = time.monotonic()
    (worker,) = chaos.start(1)
    audit = Audit(settle(r, chaos.prefix, ids, 60))
    took = time.monotonic() - t0
    print(f"{audit.line('lost messages (2 taken by a dead worker, 2 never published)')}; all done {took:.1f} s "
          f"after a worker started (lease {chaos.settings.lease_s} s)")
    audit.check_exactly_once()
    check_scores(client, Reference(chaos.s3_url), jobs)
    assert r.zcard(keys.pending_key(queue)) == 0
    assert "was lost on its way to a worker" in worker.log.read_text()


def test_a_queue_that_is_not_empty_is_not_reaped(chaos: Cluster) -> None:
    """Old pending entries of a queue with messages in it are messages waiting their turn: never resent."""
    client, r = chaos.client(), chaos.redis()
    ids = client.submit_many([text_job(i, 1, "wait", priority="low") for i in range(3)])
    low = keys.queue_name(chaos.settings, "low")
    r.zadd(keys.pending_key(low), dict.fromkeys(ids, time.time() - 3600))  # "sent an hour ago"
    from rerankq.worker.metrics import Metrics
    from rerankq.worker.reaper import Reaper

    sent: list[str] = []
    reaper = Reaper(chaos.settings, r, [low], Metrics("test"), lambda job, task_id, q: sent.append(task_id))
    reaper.confirm_s = 0.0
    for _ in range(3):
        reaper()
    assert sent == [] and r.llen(low) == 3
    r.delete(low)  # now they are nowhere: the next two beats (mark, confirm) resend all three
    reaper()
    reaper()
    assert sorted(sent) == sorted(ids)


def test_kombu_take_and_put_back_keep_the_pending_set(chaos: Cluster) -> None:
    """Through kombu with the worker's transport: taking a message clears its pending entry in the same round
    trip that marks it held; putting it back (a reject with requeue, as a dead worker's lease expiry does)
    adds it again with the message, which the reaper can resend as it was."""
    r = chaos.redis()
    name = f"{chaos.prefix}.kombu"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(chaos.settings.redis_url, transport=Transport) as conn:
        producer = conn.Producer()
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue],
                         headers={"id": "task-1"})
        r.zadd(keys.pending_key(name), {"task-1": time.time()})  # what the SDK adds as it sends
        message = queue(conn.default_channel).get(no_ack=False)
        assert message is not None and message.headers["id"] == "task-1"
        assert r.zscore(keys.pending_key(name), "task-1") is None and r.hlen("unacked") == 1
        message.requeue()
        assert r.zscore(keys.pending_key(name), "task-1") is not None and r.hlen("unacked") == 0
        stored = json.loads(r.hget(keys.pending_msg_key(name), "task-1"))
        assert stored["headers"]["id"] == "task-1" and stored["properties"]["delivery_info"]["redelivered"]
        again = queue(conn.default_channel).get(no_ack=False)  # taken again: both entries cleared
        assert again is not None and again.payload == {"n": 1}
        assert r.zscore(keys.pending_key(name), "task-1") is None
        assert r.hget(keys.pending_msg_key(name), "task-1") is None
        again.ack()
        assert r.hlen("unacked") == 0 and r.zcard(keys.UNACKED_INDEX) == 0


def test_acknowledgements_of_one_loop_pass_are_written_together(chaos: Cluster) -> None:
    """Celery acknowledges on its event loop; the acknowledgements of one pass of the loop (a round's jobs end
    together) are written in one round trip at the end of that pass, none left held."""
    from kombu.asynchronous import Hub, set_event_loop

    r = chaos.redis()
    name = f"{chaos.prefix}.acks"
    queue = Queue(name, Exchange(name, type="direct"), routing_key=name)
    with Connection(chaos.settings.redis_url, transport=Transport) as conn:
        producer = conn.Producer()
        for i in range(8):
            producer.publish({"n": i}, exchange=queue.exchange, routing_key=name, declare=[queue],
                             headers={"id": f"task-{i}"})
        messages = [queue(conn.default_channel).get(no_ack=False) for _ in range(8)]
        assert all(m is not None for m in messages) and r.hlen("unacked") == 8
        hub = Hub()
        set_event_loop(hub)
        try:
            for message in messages:
                hub.call_soon(message.ack)
            r.config_resetstat()
            next(hub.loop)  # one pass
        finally:
            set_event_loop(None)
            hub.close()
        assert r.hlen("unacked") == 0 and r.zcard(keys.UNACKED_INDEX) == 0 and r.llen(name) == 0
        assert r.info("commandstats")["cmdstat_hdel"]["calls"] == 1
