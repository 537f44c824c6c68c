"""Choosing a job's shard (``rerankq.shards``): Redis Cluster's slots, the jump hash over them, and the settings
that name the shards."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from pydantic import ValidationError

from rerankq.settings import Settings
from rerankq.shards import SLOTS, ShardNotChosen, Shards, jump, serving, shard_of, slot_of

URLS = [f"redis://127.0.0.1:{6380 + i}/0" for i in range(4)]


def test_slots_are_redis_clusters() -> None:
    # The key-to-slot test vector of the Redis Cluster specification (CRC16 of "123456789" is 0x31C3).
    assert slot_of("123456789") == 0x31C3
    assert slot_of("{user1000}.following") == slot_of("{user1000}.followers") == slot_of("user1000")
    assert slot_of("foo{}{bar}") == slot_of("foo{}{bar}")  # an empty tag: the whole id is hashed
    assert slot_of("foo{}{bar}") != slot_of("bar")
    assert all(0 <= slot_of(uuid.uuid4().hex) < SLOTS for _ in range(1000))


@pytest.mark.parametrize("count", [2, 3, 4, 5, 8])
def test_adding_a_shard_moves_slots_only_to_it(count: int) -> None:
    before = [jump(slot, count) for slot in range(SLOTS)]
    after = [jump(slot, count + 1) for slot in range(SLOTS)]
    moved = [slot for slot in range(SLOTS) if before[slot] != after[slot]]
    assert {after[slot] for slot in moved} == {count}  # every moved slot went to the new shard, none elsewhere
    # ... and about its fair share of them did (1/(count+1) of 16384, within 10 %)
    assert abs(len(moved) - SLOTS / (count + 1)) < 0.1 * SLOTS / (count + 1), len(moved)


@pytest.mark.parametrize("count", [2, 3, 7])
def test_slots_and_job_ids_spread_evenly(count: int) -> None:
    per_shard = Counter(jump(slot, count) for slot in range(SLOTS))
    assert sorted(per_shard) == list(range(count))
    assert max(per_shard.values()) - min(per_shard.values()) < 0.05 * SLOTS / count, per_shard
    ids = Counter(shard_of(f"job-{i}", count) for i in range(30000))
    assert max(ids.values()) < 1.1 * 30000 / count and min(ids.values()) > 0.9 * 30000 / count, ids


def test_one_shard_is_shard_zero() -> None:
    assert shard_of("anything", 1) == 0
    assert Shards(Settings(_env_file=None)).index("anything") == 0  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        jump(1, 0)


def test_shards_from_settings() -> None:
    settings = Settings(_env_file=None, redis_shards=",".join(URLS[:3]))  # type: ignore[call-arg]
    assert settings.redis_shards == URLS[:3] and settings.redis_url == URLS[0]  # a client's home: the first
    shards = Shards(settings)
    assert shards.count == 3 and shards.many and shards.home == 0
    ids = [f"job-{i}" for i in range(300)]
    assert [shards.index(j) for j in ids] == [shard_of(j, 3) for j in ids]
    groups = shards.group(ids)
    assert sorted(p for positions in groups.values() for p in positions) == list(range(300))
    assert all(shards.index(ids[p]) == shard for shard, positions in groups.items() for p in positions)
    one = shards.single(2)
    assert one.redis_url == URLS[2] and one.redis_shards == [] and one.shard is None
    assert shards.others(1) == [0, 2]


def test_a_process_serving_one_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    own = Settings(_env_file=None, redis_shards=",".join(URLS[:3]), shard=2)  # type: ignore[call-arg]
    assert own.redis_url == URLS[2] and Shards(own).home == 2
    by_url = Settings(_env_file=None, redis_shards=URLS[:3], redis_url=URLS[1])  # type: ignore[call-arg]
    assert by_url.shard == 1
    sentinel = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379/0"
    assert Settings(_env_file=None, redis_shards=f"{URLS[0]},{sentinel}").redis_shards == [URLS[0], sentinel]  # type: ignore[call-arg]
    monkeypatch.setenv("RERANKQ_REDIS_SHARDS", ",".join(URLS[:2]))
    monkeypatch.delenv("RERANKQ_SHARD", raising=False)
    monkeypatch.delenv("RERANKQ_REDIS_URL", raising=False)
    with pytest.raises(ShardNotChosen, match="--shard I or RERANKQ_SHARD=I"):
        serving(None, "rerankq worker")
    assert serving(1, "rerankq worker").redis_url == URLS[1]
    monkeypatch.setenv("RERANKQ_SHARD", "0")
    assert serving(None, "rerankq worker").redis_url == URLS[0]


@pytest.mark.parametrize(("fields", "message"), [
    ({"redis_shards": f"{URLS[0]},{URLS[1]}", "shard": 2}, "RERANKQ_SHARD=2 is out of range"),
    ({"shard": 0}, "needs RERANKQ_REDIS_SHARDS"),
    ({"redis_shards": f"{URLS[0]},http://x"}, "RERANKQ_REDIS_SHARDS item 1 must start with"),
    ({"redis_shards": f"{URLS[0]},{URLS[0]}"}, "the same Redis twice"),
    ({"redis_shards": f"{URLS[0]},{URLS[1]}", "redis_url": URLS[3]}, "RERANKQ_REDIS_URL is not one of"),
])
def test_bad_shard_settings_name_the_setting(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **fields)  # type: ignore[arg-type]


def test_the_cli_says_which_shard_setting_is_wrong() -> None:
    from rerankq.cli.main import EXIT_UNAVAILABLE, explain

    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, redis_shards=f"{URLS[0]},{URLS[1]}", shard=2)  # type: ignore[call-arg]
    assert explain(caught.value, "worker") == (
        EXIT_UNAVAILABLE, "invalid settings: RERANKQ_SHARD=2 is out of range: RERANKQ_REDIS_SHARDS lists 2 shards "
        "(0 to 1)")
    assert explain(ShardNotChosen("rerankq worker serves one shard"), "worker") == (
        EXIT_UNAVAILABLE, "rerankq worker serves one shard")
