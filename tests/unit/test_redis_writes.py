"""What the SDK and the workers hand Redis: the job JSON a record keeps, packed; every command and pipeline sent in
one write (``rerankq.connections.OneWrite``), by our clients and kombu's channels alike."""

from __future__ import annotations

import json
import random

import redis
from kombu.transport import redis as kombu_redis

from rerankq.connections import WRITE_MAX, OneWrite, redis_client
from rerankq.fanout import CountingChannel, CountingSentinelChannel
from rerankq.jobs import PACKED, pack_job, unpack_job
from rerankq.settings import Settings
from rerankq.worker.transport import DeadLetterChannel, DeadLetterSentinelChannel


def text_job(docs: int = 8) -> dict[str, object]:
    rng = random.Random(7)
    words = ["the", "a", "red", "warm", "city", "trail", "water", "camera", "lens", "strap", "winter", "rain"]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    return {"job_id": "j-1", "query": {"text": text(8)}, "documents": [{"text": text(40)} for _ in range(docs)],
            "priority": "normal"}


def test_a_records_job_json_is_packed_and_read_back_whole() -> None:
    job = text_job()
    packed = pack_job(job)
    assert packed.startswith(PACKED) and packed.isascii()  # the record stays text (``JobRecord.from_hash``)
    assert len(packed) < len(json.dumps(job, separators=(",", ":"))) / 2
    assert unpack_job(packed) == job
    assert unpack_job(packed.encode()) == job  # as Redis returns it


def test_a_plain_json_wire_from_an_earlier_version_still_reads() -> None:
    job = text_job(2)
    assert unpack_job(json.dumps(job).encode()) == job


def test_a_pipeline_with_large_values_goes_out_in_one_piece_with_the_same_bytes() -> None:
    plain, whole = redis.Connection(), redis_client(Settings(redis_url="redis://127.0.0.1:1/0"))
    one = whole.connection_pool.connection_class()
    commands = [("HSET", f"job:{i}", "wire", "x" * 9000, "state", "queued") for i in range(40)]
    pieces = plain.pack_commands(commands)
    assert len(pieces) > 40  # redis-py: a piece per large value, and the rest cut at about 6 kB
    assert one.pack_commands(commands) == [b"".join(pieces)]
    assert one.pack_command("LPUSH", "q", "y" * 20000) == [b"".join(plain.pack_command("LPUSH", "q", "y" * 20000))]
    # a pipeline past WRITE_MAX goes in writes of about that size, not one copy of all of it
    big = [("LPUSH", "q", "z" * 100_000) for _ in range(25)]
    writes = one.pack_commands(big)
    assert b"".join(writes) == b"".join(plain.pack_commands(big))
    assert len(writes) == 3 and all(len(w) < WRITE_MAX + 110_000 for w in writes)


def test_every_connection_kind_sends_in_one_write() -> None:
    for url, base in (("redis://h:6379/0", redis.Connection), ("rediss://h:6380/0", redis.SSLConnection),
                      ("unix:///tmp/redis.sock", redis.UnixDomainSocketConnection)):
        cls = redis_client(Settings(redis_url=url)).connection_pool.connection_class
        assert issubclass(cls, OneWrite) and issubclass(cls, base), url
    # kombu's channels, producers' and workers', for plain and Sentinel URLs: each keeps its own connection kind
    for channel in (CountingChannel, DeadLetterChannel):
        assert issubclass(channel.connection_class, OneWrite)
        assert issubclass(channel.connection_class, redis.Connection)
        assert issubclass(channel.connection_class_ssl, redis.SSLConnection)
    for channel in (CountingSentinelChannel, DeadLetterSentinelChannel):
        assert issubclass(channel.connection_class, OneWrite)
        assert issubclass(channel.connection_class, kombu_redis.SentinelChannel.connection_class)
        assert issubclass(channel.connection_class_ssl, kombu_redis.SentinelChannel.connection_class_ssl)
