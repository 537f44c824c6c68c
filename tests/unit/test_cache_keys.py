"""The score cache's key and what goes into it: every component changes the key, nothing else does; media are
keyed by what they are (S3 ETag rules, byte digests, frame lists), the same before and after a fetch; a
checkpoint's fingerprint; the settings and the job field."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from rerankq.errors import InvalidRequest
from rerankq.media.identity import file_identity, frames_identity, s3_identity, side_media, side_refs, tagged
from rerankq.media.sides import ResolvedSide, Side, VisionBudget
from rerankq.models.fingerprint import checkpoint_fingerprint
from rerankq.models.scorekeys import Content, JobContext, JobKeys, from_resolved, from_side
from rerankq.schema import parse_job
from rerankq.settings import Settings

MD5 = "0123456789abcdef0123456789abcdef"
BASE = JobContext(model='{"weights": "sha256:aa"}', instruction="Find it.", max_tokens_per_doc=None,
                  budget=VisionBudget(), exif_transpose=False)
TEXT_QUERY = Content(("a cat",), ())
IMAGE_QUERY = Content(("a cat",), ("image=md5:" + MD5,))
TEXT_DOC = Content(("a dog",), ())
IMAGE_DOC = Content((), ("image=md5:" + "f" * 32,))


def key(context: JobContext = BASE, query: Content = IMAGE_QUERY, doc: Content = IMAGE_DOC) -> str | None:
    return JobKeys(context, query).key(doc)


BUDGET_CHANGES = {"fps": 2.0, "max_frames": 8, "image_min_tokens": 16, "image_max_tokens": 900,
                  "video_max_tokens": 1024}


@pytest.mark.parametrize("change", [
    {"model": '{"weights": "sha256:bb"}'}, {"instruction": "Find something else."}, {"max_tokens_per_doc": 64},
    {"exif_transpose": True}, *({"budget": VisionBudget(**{k: v})} for k, v in BUDGET_CHANGES.items()),
], ids=lambda c: next(iter(c)) if "budget" not in c else str(c["budget"]))
def test_every_job_component_changes_the_key_of_a_pair_with_media(change: dict[str, Any]) -> None:
    assert key(dataclasses.replace(BASE, **change)) != key()


@pytest.mark.parametrize("query, doc", [
    (Content(("a kitten",), IMAGE_QUERY.media), IMAGE_DOC),  # query text
    (Content(("a cat",), ("image=md5:" + "e" * 32,)), IMAGE_DOC),  # query medium
    (IMAGE_QUERY, Content(("caption",), IMAGE_DOC.media)),  # document text
    (IMAGE_QUERY, Content((), ("image=md5:" + "e" * 32,))),  # document medium
    (IMAGE_QUERY, Content((), ("video=md5:" + "f" * 32,))),  # same bytes as a video
    (Content(("a", "cat"), IMAGE_QUERY.media), IMAGE_DOC),  # texts split differently
    (IMAGE_DOC, IMAGE_QUERY),  # sides swapped
])
def test_every_content_component_changes_the_key(query: Content, doc: Content) -> None:
    assert key(query=query, doc=doc) != key()


def test_the_key_is_stable_and_a_text_pair_ignores_the_vision_budget() -> None:
    assert key() == key() and len(key() or "") == 40
    text_key = key(query=TEXT_QUERY, doc=TEXT_DOC)
    for field, value in BUDGET_CHANGES.items():
        assert key(dataclasses.replace(BASE, budget=VisionBudget(**{field: value})), TEXT_QUERY, TEXT_DOC) == text_key
    assert key(dataclasses.replace(BASE, exif_transpose=True), TEXT_QUERY, TEXT_DOC) == text_key
    assert JobKeys(BASE, TEXT_QUERY).key(None) is None


def test_a_key_computed_before_the_fetch_equals_the_one_after() -> None:
    budget = VisionBudget(max_frames=2)
    frames = [f"s3://m/f{i}.png" for i in range(5)]
    side = Side(texts=["caption"], images=["s3://m/a.png"], videos=["s3://m/clip.mp4", frames])
    assert side_refs(side, budget) == ["s3://m/clip.mp4", "s3://m/f0.png", "s3://m/f4.png", "s3://m/a.png"]
    known = {ref: f"md5:{i:032x}" for i, ref in enumerate(side_refs(side, budget))}
    before = from_side(side, budget, known)
    resolved = ResolvedSide(texts=["caption"], vision=[object()] * 3, media=[
        tagged("video", known["s3://m/clip.mp4"]),
        tagged("frames", frames_identity(5, [known["s3://m/f0.png"], known["s3://m/f4.png"]])),
        tagged("image", known["s3://m/a.png"])])
    assert before is not None and before == from_resolved(resolved)
    assert from_side(side, budget, {**known, "s3://m/a.png": None}) is None  # one medium not told: no early key
    assert from_resolved(dataclasses.replace(resolved, media=[])) is None  # media unknown: never cached
    assert from_resolved(dataclasses.replace(resolved, media=[None, *resolved.media[1:]])) is None


def test_frame_lists_are_the_frames_sampled_and_their_count() -> None:
    assert frames_identity(5, ["md5:a", "md5:b"]) == frames_identity(5, ["md5:a", "md5:b"])
    assert frames_identity(5, ["md5:a", "md5:b"]) != frames_identity(6, ["md5:a", "md5:b"])
    assert frames_identity(5, ["md5:a", "md5:b"]) != frames_identity(5, ["md5:b", "md5:a"])
    assert frames_identity(5, ["md5:a", None]) is None
    assert side_media(Side(videos=[["s3://m/x.png"]]), VisionBudget(), {}) is None


def test_s3_objects_are_keyed_by_etag_content_md5_only_where_s3_says_so() -> None:
    assert s3_identity("b", "k", {"ETag": f'"{MD5.upper()}"'}) == f"md5:{MD5}"  # any key: the same bytes
    assert s3_identity("b", "k", {"ETag": f'"{MD5}"', "ServerSideEncryption": "AES256"}) == f"md5:{MD5}"
    multipart = s3_identity("b", "k", {"ETag": f'"{MD5}-3"', "VersionId": "v2"})
    assert multipart == f"s3:b/k#{MD5}-3#v2"  # a multipart ETag says nothing about other objects
    assert s3_identity("b", "k", {"ETag": f'"{MD5}"', "ServerSideEncryption": "aws:kms"}).startswith("s3:b/k#")
    assert s3_identity("b", "k", {"ETag": f'"{MD5}"', "SSECustomerAlgorithm": "AES256"}).startswith("s3:b/k#")
    assert s3_identity("b", "k", {"ETag": f'"{MD5}-3"', "VersionId": "null"}) == f"s3:b/k#{MD5}-3#"
    assert s3_identity("b", "k", {}) is None


def test_a_local_file_is_its_digest_and_a_rewrite_is_a_new_medium(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"one")
    first = file_identity(path)
    assert first.startswith("sha256:") and file_identity(path) == first
    path.write_bytes(b"two")  # same size: the new mtime tells the memo apart
    os.utime(path, ns=(1, 2))
    assert file_identity(path) != first


def test_a_checkpoint_fingerprint_follows_its_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rerankq.models import fingerprint

    ckpt, cache = tmp_path / "ckpt", tmp_path / "cache"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (ckpt / ".complete").write_text("s3://bucket/model/")  # hidden: a download marker, not the model
    first = checkpoint_fingerprint(ckpt, cache)
    reads: list[Path] = []
    original = fingerprint._file_digest
    monkeypatch.setattr(fingerprint, "_file_digest", lambda p: reads.append(p) or original(p))
    assert checkpoint_fingerprint(ckpt, cache) == first and reads == []  # remembered: nothing read again
    (ckpt / ".complete").write_text("elsewhere")
    assert checkpoint_fingerprint(ckpt, cache) == first
    (ckpt / "model.safetensors").write_bytes(b"other weights")
    changed = checkpoint_fingerprint(ckpt, cache)
    assert changed != first and reads == [ckpt / "model.safetensors"]
    (ckpt / "tokenizer.json").write_text("{}")
    assert checkpoint_fingerprint(ckpt, cache) != changed


def test_a_hub_snapshot_is_its_commit(tmp_path: Path) -> None:
    commit = "a" * 40
    snapshot = tmp_path / "models--Qwen--Qwen3-VL-Reranker-2B" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    assert checkpoint_fingerprint(snapshot, tmp_path / "cache") == f"hf-commit:{commit}"


def test_the_fake_model_identity_follows_max_length() -> None:
    from rerankq.models.fake import load_fake
    from rerankq.models.options import LoadOptions

    assert load_fake("fake:hash", LoadOptions()).cache_identity() == \
        load_fake("fake:h100-2b", LoadOptions()).cache_identity()  # same scores, modelled time apart
    assert load_fake("fake:hash", LoadOptions(max_length=512)).cache_identity() != \
        load_fake("fake:hash", LoadOptions()).cache_identity()


def test_the_cache_is_on_only_with_a_redis_of_its_own() -> None:
    assert not Settings().cache.active
    assert Settings(cache={"redis_url": "redis://cache:6379/0"}).cache.active
    assert not Settings(cache={"redis_url": "redis://cache:6379/0", "enabled": False}).cache.active
    with pytest.raises(ValueError, match="RERANKQ_CACHE__REDIS_URL"):
        Settings(cache={"redis_url": "sentinel://cache:26379"})


def test_a_job_may_opt_out_of_the_cache() -> None:
    job = {"query": "q", "documents": ["d"]}
    assert parse_job(job).cache is None and "cache" not in parse_job(job).wire()
    assert parse_job({**job, "cache": False}).wire()["cache"] is False
    assert parse_job({**job, "cache": True}).cache is True
    with pytest.raises(InvalidRequest, match="valid boolean") as err:
        parse_job({**job, "cache": "no"})
    assert err.value.field == "cache"
