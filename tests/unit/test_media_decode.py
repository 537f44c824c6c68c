"""Decoding untrusted bytes: formats, orientation, transparency, bombs, corrupt and truncated data."""

from __future__ import annotations

import gc
import io
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from rerankq.cli.samples import clip_bytes, photo_bytes, png_header_only
from rerankq.media.decode import decode_image, decode_video, flatten
from rerankq.media.sides import VisionBudget, VisionError
from rerankq.models.qwen3vl import vision


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()





@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF"])
def test_common_formats_decode_to_rgb(fmt: str) -> None:
    image = decode_image(photo_bytes(120, 80, fmt=fmt))
    assert (image.mode, image.size) == ("RGB", (120, 80))


def test_exif_orientation_is_kept_as_stored_unless_asked() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    data = _save(Image.new("RGB", (200, 100), "red"), "JPEG", exif=exif)
    assert decode_image(data).size == (200, 100)  # as qwen-vl-utils: no rotation
    assert decode_image(data, exif_transpose=True).size == (100, 200)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    image = Image.new(mode, (8, 8), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    decoded = decode_image(_save(image, "PNG"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_palette_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    decoded = decode_image(_save(image, "PNG", transparency=0))
    assert decoded.getpixel((0, 0)) == (255, 255, 255)  # transparent index → white, not its black palette colour
    assert decoded.getpixel((1, 1)) == (255, 0, 0)


def test_animated_gif_reads_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("blue", "green", "red")]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert decode_image(data).getpixel((4, 4)) == (0, 0, 255)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits() -> None:
    image = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert flatten(image).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_decompression_bomb_is_refused_from_the_header(side: int) -> None:
    with pytest.raises(VisionError, match=r"over the limit 64000000 .*limits.max_image_pixels"):
        decode_image(png_header_only(side, side), max_pixels=64_000_000)


@pytest.mark.parametrize("data", [b"", b"not an image at all", photo_bytes(64, 64)[:200]], ids=["empty", "text",
                                                                                                "truncated"])
def test_corrupt_or_truncated_images_raise_vision_error(data: bytes) -> None:
    with pytest.raises(VisionError, match="not a decodable image") as err:
        decode_image(data)
    assert "object at 0x" not in str(err.value)  # no repr of the in-memory buffer


def test_bytes_that_are_no_image_say_so_plainly() -> None:
    with pytest.raises(VisionError) as err:
        decode_image(b"not an image at all")
    assert str(err.value) == "not a decodable image (unrecognised image format)"


@pytest.fixture(scope="module")
def clip() -> bytes:
    return clip_bytes(seconds=6, fps=10, width=160, height=120)


def test_video_is_sampled_at_fps(clip: bytes) -> None:
    decoded = decode_video(clip, fps=1.0, max_frames=64)
    assert decoded.frames.shape == (6, 3, 120, 160)
    assert (decoded.fps, decoded.total_frames) == (10.0, 60)
    assert decoded.indices == torch.linspace(0, 59, 6).round().long().tolist()
    means = decoded.frames.float().mean(dim=(1, 2, 3))
    assert means[0] < means[1] < means[2]  # the clip brightens frame by frame: frames come in order


@pytest.mark.parametrize(("size", "shrinks"), [((640, 480), True), ((160, 120), False)])
def test_video_resized_while_decoding_matches_resizing_afterwards(size: tuple[int, int], shrinks: bool) -> None:
    clip = clip_bytes(seconds=2, fps=10, width=size[0], height=size[1])
    budget = VisionBudget(video_max_tokens=512)
    full = decode_video(clip, 5.0, 64)
    small = decode_video(clip, 5.0, 64, frame_size=lambda n, h, w: vision.video_frame_size(n, h, w, budget))
    assert (small.frames.shape[-2:] != full.frames.shape[-2:]) == shrinks  # upscaling waits for video_input
    a = vision.video_input(full.frames, full.indices, full.fps, budget)
    b = vision.video_input(small.frames, small.indices, small.fps, budget)
    assert a.grid_thw == b.grid_thw and torch.equal(a.pixel_values, b.pixel_values)


def test_video_over_the_duration_limit_is_refused(clip: bytes) -> None:
    with pytest.raises(VisionError, match=r"6.0 s, over the limit 5 s \(limits.max_video_seconds, "
                       r"RERANKQ_LIMITS__MAX_VIDEO_SECONDS\)"):
        decode_video(clip, 1.0, 64, max_seconds=5)


def test_video_over_the_pixel_limit_is_refused(clip: bytes) -> None:
    with pytest.raises(VisionError, match=r"160x120 = 19200 pixels, over the limit 1000 \(limits.max_image_pixels, "
                       r"RERANKQ_LIMITS__MAX_IMAGE_PIXELS\)"):
        decode_video(clip, 1.0, 64, max_pixels=1000)


def test_truncated_video_without_index_is_an_error(clip: bytes) -> None:
    # the default mp4 layout puts the index (moov) at the end: a truncated file cannot be opened at all
    with pytest.raises(VisionError, match="not a decodable video"):
        decode_video(clip[: len(clip) // 2], 1.0, 64)


def test_truncated_faststart_video_is_decoded_best_effort() -> None:
    data = clip_bytes(seconds=6, fps=10, width=160, height=120, faststart=True)
    decoded = decode_video(data[: int(len(data) * 0.8)], 1.0, 64)
    assert decoded.frames.shape[0] == 6
    assert torch.equal(decoded.frames[-1], decoded.frames[-2])  # the missing tail repeats the last decoded frame
    with pytest.raises(VisionError, match=r"truncated or corrupt: .* of 6 sampled frames decode"):
        decode_video(data[: int(len(data) * 0.3)], 1.0, 64)


@pytest.mark.parametrize("data", [b"", b"\x00" * 4096, photo_bytes(32, 32)], ids=["empty", "zeros", "jpeg"])
def test_non_videos_raise_vision_error(data: bytes) -> None:
    with pytest.raises(VisionError):
        decode_video(data, 1.0, 64)


def test_decoding_an_animated_file_from_a_path_leaves_no_file_open(tmp_path) -> None:  # type: ignore[no-untyped-def]
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("blue", "green")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(tmp_path / "a.gif").getpixel((1, 1)) == (0, 0, 255)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def _clip_with_keyframes_every(keyint: int, codec: str, frames: int = 300) -> bytes:
    import av

    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream: Any = container.add_stream(codec, rate=30, options={"g": str(keyint), "bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(frames):
            pixels = (rng.integers(0, 40, (64, 96, 3)) + i % 200).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(("keyint", "codec"), [(10, "libx264"), (45, "libx264"), (10, "mpeg4")])
def test_seeking_between_samples_gives_the_frames_a_full_decode_gives(keyint: int, codec: str) -> None:
    import av

    if codec not in av.codecs_available:
        pytest.skip(f"{codec} not available")
    data = _clip_with_keyframes_every(keyint, codec)
    with av.open(io.BytesIO(data)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    decoded = decode_video(data, fps=1.0, max_frames=64)
    assert len(decoded.indices) == 10
    expected = torch.from_numpy(np.stack([every[i] for i in decoded.indices])).permute(0, 3, 1, 2)
    assert torch.equal(decoded.frames, expected)
