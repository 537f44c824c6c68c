"""The media store and resolver against a real S3 endpoint (moto's server over HTTP) holding uploaded media."""

from __future__ import annotations

import contextlib
import io
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from rerankq.cli.cluster import S3Server
from rerankq.cli.samples import clip_bytes, photo_bytes, png_header_only
from rerankq.errors import MediaError
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import ResolvedSide, Side, VisionBudget
from rerankq.media.store import MediaStore
from rerankq.models.qwen3vl import vision
from rerankq.models.qwen3vl.vision import QwenVision
from rerankq.settings import Settings

BUCKET = "media-tests"


def _png(image: Image.Image, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **kwargs)
    return buffer.getvalue()


def _palette_with_transparency() -> bytes:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.paste(1, (16, 16, 48, 48))
    return _png(image, transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (96, 64), c) for c in ("red", "green", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buffer.getvalue()





@pytest.fixture(scope="module")
def objects(s3: Any) -> dict[str, str]:
    """Uploaded media, name → s3:// reference."""
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=BUCKET)
    clip = clip_bytes(seconds=6, fps=10, width=160, height=120)
    bodies = {
        "photo.jpg": photo_bytes(640, 480), "large.jpg": photo_bytes(4000, 3000, seed=3),
        "tiny.png": photo_bytes(8, 8, fmt="PNG"), "alpha.png": _png(Image.new("RGBA", (120, 90), (0, 0, 0, 0))),
        "photo.webp": photo_bytes(300, 200, fmt="WEBP"), "animated.gif": _animated_gif(),
        "palette.png": _palette_with_transparency(), "clip.mp4": clip, "truncated.mp4": clip[: len(clip) // 2],
        "corrupt.jpg": b"\xff\xd8\xff\xe0 definitely not a jpeg", "bomb.png": png_header_only(10_000, 10_000),
        "empty.jpg": b"", **{f"frame{i}.jpg": photo_bytes(64, 48, seed=i) for i in range(10)},
    }
    for name, body in bodies.items():
        s3.put_object(Bucket=BUCKET, Key=name, Body=body)
    return {name: f"s3://{BUCKET}/{name}" for name in bodies}


@pytest.fixture()
def settings(s3_server: S3Server) -> Settings:
    return Settings(s3_endpoint_url=s3_server.url, media={"retry_backoff_s": 0.01, "fetch_threads": 4})


@pytest.fixture()
def resolver(settings: Settings) -> Any:
    with MediaResolver(settings, QwenVision()) as resolver:
        yield resolver


@pytest.mark.parametrize("name", ["photo.jpg", "large.jpg", "tiny.png", "alpha.png", "photo.webp", "animated.gif",
                                  "palette.png"])
def test_image_formats_and_sizes_resolve_within_the_token_bounds(resolver: MediaResolver,
                                                                 objects: dict[str, str], name: str) -> None:
    side = resolver.resolve_side(Side(texts=["t"], images=[objects[name]]), VisionBudget())
    (item,) = side.vision
    assert (item.kind, side.texts) == ("image", ["t"])
    assert 4 <= item.num_tokens <= 1800


def test_transparent_pixels_come_out_white(resolver: MediaResolver, objects: dict[str, str]) -> None:
    for name in ("alpha.png", "palette.png"):
        item = resolver.resolve_side(Side(images=[objects[name]]), VisionBudget()).vision[0]
        assert item.pixel_values[0, 0].item() == 255  # white


def test_video_file_is_sampled_with_timestamps(resolver: MediaResolver, objects: dict[str, str]) -> None:
    item = resolver.resolve_side(Side(videos=[objects["clip.mp4"]]), VisionBudget(fps=1.0)).vision[0]
    sampled = [0, 12, 24, 35, 47, 59]  # 60 frames at 10 fps, 1 fps wanted: 6 frames, 3 temporal pairs
    assert (item.kind, item.grid_thw[0], item.timestamps) == ("video", 3, vision.timestamps(sampled, 10))


def test_frame_list_fetches_only_the_sampled_frames(resolver: MediaResolver, objects: dict[str, str]) -> None:
    frames: list[Any] = [objects[f"frame{i}.jpg"] for i in range(10)]
    frames[3] = Image.new("RGB", (64, 48), "white")  # the in-process API may mix images and references
    item = resolver.resolve_side(Side(videos=[frames]), VisionBudget(max_frames=4)).vision[0]
    assert (item.kind, item.grid_thw[0]) == ("video", 2)
    assert resolver.stats.fetches == 3  # sampled: frames 0, 3, 6, 9; frame 3 is an image, not fetched


@pytest.mark.parametrize(("name", "as_video", "reason"), [
    ("missing.jpg", False, "no such key"),
    ("corrupt.jpg", False, "not a decodable image"),
    ("bomb.png", False, r"10000x10000 = 100000000 pixels, over the limit 64000000 "
                        r"\(limits.max_image_pixels, RERANKQ_LIMITS__MAX_IMAGE_PIXELS\)"),
    ("empty.jpg", False, "object is empty"),
    ("truncated.mp4", True, "not a decodable video"),
    ("photo.jpg", True, "not a decodable video|video"),
])
def test_bad_objects_fail_with_the_reference_and_reason(resolver: MediaResolver, objects: dict[str, str],
                                                        name: str, as_video: bool, reason: str) -> None:
    ref = objects.get(name, f"s3://{BUCKET}/{name}")
    side = Side(videos=[ref]) if as_video else Side(images=[ref])
    with pytest.raises(MediaError, match=reason) as info:
        resolver.resolve_side(side, VisionBudget())
    assert info.value.ref == ref and str(info.value).startswith(f"{ref}: ")


def test_missing_bucket(resolver: MediaResolver) -> None:
    with pytest.raises(MediaError, match=r"^s3://no-such-bucket-here/a.jpg: no such bucket$"):
        resolver.resolve_side(Side(images=["s3://no-such-bucket-here/a.jpg"]), VisionBudget())


def test_one_bad_reference_fails_only_its_side(resolver: MediaResolver, objects: dict[str, str]) -> None:
    sides = [Side(images=[objects["photo.jpg"]]), Side(texts=["x"], images=[objects["photo.jpg"], objects["bomb.png"]]),
             Side(texts=["text only"]), Side(videos=[objects["clip.mp4"]]), Side(images=[f"s3://{BUCKET}/nope.jpg"])]
    results = resolver.resolve_sides(sides, VisionBudget())
    assert [type(r).__name__ for r in results] == ["ResolvedSide", "MediaError", "ResolvedSide", "ResolvedSide",
                                                   "MediaError"]
    assert str(results[1]).startswith(objects["bomb.png"]) and str(results[4]).endswith("no such key")
    assert isinstance(results[2], ResolvedSide) and results[2].vision == []


def test_object_over_the_byte_limit_is_refused_after_one_small_request(s3_server: S3Server,
                                                                       objects: dict[str, str]) -> None:
    store = MediaStore(Settings(s3_endpoint_url=s3_server.url, limits={"max_media_bytes": 10_000}),
                       range_bytes=4096)
    with pytest.raises(MediaError,
                       match=r"over the limit 10000 \(limits.max_media_bytes, RERANKQ_LIMITS__MAX_MEDIA_BYTES\)"):
        store.fetch(objects["photo.jpg"])
    assert store.counters.snapshot()["requests"] == 1


def test_large_objects_are_read_in_ranges_and_spooled_to_disk(settings: Settings, s3: Any,
                                                              objects: dict[str, str]) -> None:
    clip = s3.get_object(Bucket=BUCKET, Key="clip.mp4")["Body"].read()
    store = MediaStore(settings, range_bytes=16 * 1024, spool_bytes=32 * 1024)
    with store.open(objects["clip.mp4"]) as source:
        assert isinstance(source, Path) and source.read_bytes() == clip
    assert not source.exists()  # the temporary file is gone
    assert store.counters.snapshot()["requests"] == -(-len(clip) // (16 * 1024))
    with MediaResolver(settings, QwenVision(), store) as ranged, MediaResolver(settings, QwenVision()) as whole:
        a = ranged.resolve_side(Side(videos=[objects["clip.mp4"]]), VisionBudget()).vision[0]
        b = whole.resolve_side(Side(videos=[objects["clip.mp4"]]), VisionBudget()).vision[0]
    assert torch.equal(a.pixel_values, b.pixel_values)


def test_shared_media_are_fetched_once_per_batch_and_then_cached(resolver: MediaResolver,
                                                                 objects: dict[str, str]) -> None:
    query = Side(texts=["q"], images=[objects["photo.jpg"]])
    batch = [s for i in range(50) for s in (query, Side(images=[objects[f"frame{i % 10}.jpg"]]))]
    results = resolver.resolve_sides(batch, VisionBudget())
    assert all(isinstance(r, ResolvedSide) for r in results)
    assert (resolver.stats.fetches, resolver.stats.deduplicated) == (11, 89)
    assert results[0].vision[0] is results[2].vision[0]  # type: ignore[union-attr]
    resolver.resolve_sides(batch[:4], VisionBudget())  # the next batch (query, frame0, query, frame1): cached
    assert (resolver.stats.fetches, resolver.stats.cache_hits) == (11, 3)


def test_budget_fields_are_part_of_the_cache_key(resolver: MediaResolver, objects: dict[str, str]) -> None:
    side = Side(images=[objects["large.jpg"]])
    small = resolver.resolve_side(side, VisionBudget(image_max_tokens=64)).vision[0]
    big = resolver.resolve_side(side, VisionBudget(image_max_tokens=1024)).vision[0]
    assert small.num_tokens <= 64 < big.num_tokens <= 1024
    assert resolver.stats.fetches == 2
    resolver.resolve_side(side, VisionBudget(image_max_tokens=64, fps=2.0))  # fps does not change an image
    assert resolver.stats.fetches == 2


def test_cache_is_bounded_in_bytes(s3_server: S3Server, objects: dict[str, str]) -> None:
    one_image = 16 * 1536  # a 64x48 frame becomes 64x64 px: 16 patches of 1536 uint8
    settings = Settings(s3_endpoint_url=s3_server.url, media={"cache_bytes": one_image * 3 // 2})
    with MediaResolver(settings, QwenVision()) as resolver:
        for name in ("frame0.jpg", "frame1.jpg", "frame0.jpg"):
            resolver.resolve_side(Side(images=[objects[name]]), VisionBudget())
        assert (resolver.stats.cache_items, resolver.stats.cache_bytes) == (1, one_image)
        assert resolver.stats.fetches == 3 and resolver.stats.cache_evictions >= 1


def test_concurrent_requests_for_one_object_fetch_it_once(resolver: MediaResolver, objects: dict[str, str]) -> None:
    results: list[ResolvedSide] = []
    threads = [threading.Thread(target=lambda: results.append(
        resolver.resolve_side(Side(videos=[objects["clip.mp4"]]), VisionBudget()))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 6 and resolver.stats.fetches == 1


def test_pil_images_pass_through_without_a_fetch(resolver: MediaResolver) -> None:
    image = Image.new("LA", (64, 64), (0, 0))
    side = resolver.resolve_side(Side(images=[image]), VisionBudget())
    assert side.vision[0].pixel_values[0, 0].item() == 255  # transparent → white
    assert resolver.stats.fetches == 0


def test_local_files_only_when_enabled(s3_server: S3Server, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(photo_bytes(64, 64))
    side = Side(images=[f"file://{tmp_path}/a.jpg"])
    with MediaResolver(Settings(allow_file_urls=True), QwenVision()) as resolver:
        assert resolver.resolve_side(side, VisionBudget()).vision[0].kind == "image"
    refused = pytest.raises(MediaError, match="RERANKQ_ALLOW_FILE_URLS")
    with MediaResolver(Settings(), QwenVision()) as resolver, refused:
        resolver.resolve_side(side, VisionBudget())
