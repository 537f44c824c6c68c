"""Bytes → pixels: images with Pillow, videos with PyAV (no torchvision, no decord).

Decoding errors become ``VisionError`` with a reason a user can act on (never the repr of an in-memory
buffer); the media layer adds the reference. Documented choices:

- images come back as RGB, stored orientation: the EXIF orientation tag is **not** applied, as in the
  official preprocessing (qwen-vl-utils); ``exif_transpose=True`` (``RERANKQ_MEDIA__EXIF_TRANSPOSE``) applies
  it, to references and to PIL images alike (``orient``); anything with transparency (RGBA, LA, palette or
  colour-key ``transparency``) is composited on white; 16-bit and float images are scaled to 8 bits;
- an animated image (GIF, APNG, animated WebP) is read as its **first frame**;
- the pixel count is checked from the header, before any pixel is decoded (decompression-bomb guard);
- videos are decoded frame by frame and only the sampled frames are kept (optionally resized as they are
  decoded, see ``decode_video``), so a long video never sits in memory whole; between samples the decoder
  seeks past whole keyframe intervals, so a long video is not decoded whole either;
- a truncated video whose container still opens is decoded best effort: when at least half of the sampled
  frames decode, the missing ones repeat the last decoded frame (a warning is logged); otherwise it is an error.
"""

from __future__ import annotations

import bisect
import io
import logging
import math
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from rerankq.media.sides import VisionError
from rerankq.settings import knob

log = logging.getLogger(__name__)

Source = bytes | str | Path
FrameSize = Callable[[int, int, int], tuple[int, int]]  # (nframes, height, width) → (height, width)

FRAME_FACTOR = 2  # sampled frame counts are even (two frames per temporal patch)

# Exceptions Pillow raises on data that is not an image, truncated or malformed (fuzzing finds them all).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError, KeyError)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


@dataclass
class DecodedVideo:
    """The sampled frames of a video file, uint8 (T, C, H, W), with their indices and the file's fps."""

    frames: torch.Tensor
    indices: list[int]
    fps: float
    total_frames: int


def _open(source: Source) -> io.BytesIO | str:
    return io.BytesIO(source) if isinstance(source, bytes) else str(source)


def _reason(exc: BaseException) -> str:
    """A library's error message without the reprs of in-memory objects (``<_io.BytesIO object at 0x…>``)."""
    if isinstance(exc, UnidentifiedImageError):
        return "unrecognised image format"
    text = _OBJECT_REPR.sub("", str(exc)).replace(": '<none>'", "").strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decode_image(source: Source, max_pixels: int = 64_000_000, exif_transpose: bool = False) -> Image.Image:
    """Decode one image to RGB, as stored (``exif_transpose=True`` applies the EXIF orientation); the first
    frame of an animated image.

    Raises ``VisionError`` for data that is not an image, is truncated, or has more than ``max_pixels``
    source pixels (decompression-bomb guard, checked from the header before any pixel is decoded).
    """
    try:
        with warnings.catch_warnings():
            # Our own limit replaces Pillow's warning; Pillow's hard error (2x its limit) still applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(_open(source)) as image:  # closed on the way out: animated files keep it open
                width, height = image.size
                if width * height > max_pixels:
                    raise VisionError(f"image is {width}x{height} = {width * height} pixels, over the limit "
                                      f"{max_pixels} ({knob('limits.max_image_pixels')})")
                image.seek(0)  # animated images: the first frame, documented behaviour
                image.load()
                return flatten(orient(image, exif_transpose) if exif_transpose else image.copy())
    except VisionError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit fired first
        raise VisionError(f"image is over the limit {max_pixels} pixels ({knob('limits.max_image_pixels')})"
                          ) from exc
    except _PIL_ERRORS as exc:  # PIL's ways of saying "not an image" / truncated
        raise VisionError(f"not a decodable image ({_reason(exc)})") from exc


def orient(image: Image.Image, exif_transpose: bool) -> Image.Image:
    """``image`` turned upright by its EXIF orientation when ``exif_transpose`` is set, else ``image`` itself.
    A malformed EXIF block leaves it as stored (best effort)."""
    if not exif_transpose:
        return image
    try:
        return ImageOps.exif_transpose(image) or image.copy()
    except _PIL_ERRORS as exc:
        log.warning("ignoring unreadable EXIF orientation: %s", exc)
        return image.copy()


def flatten(image: Image.Image) -> Image.Image:
    """RGB: transparency of any kind composited on white, high bit depths scaled to 8 bits."""
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return to_rgb(image.convert("RGBA"))
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if image.mode != "F" else 1.0
        return Image.fromarray(np.clip(array * scale, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_video(source: Source, fps: float, max_frames: int, max_seconds: float = 3600.0,
                 frame_size: FrameSize | None = None, max_pixels: int | None = None) -> DecodedVideo:
    """Decode the frames of a video file that ``fps`` and ``max_frames`` select (official sampling).

    ``source`` is the file's bytes or a path (a path keeps large files out of memory). With ``frame_size``
    (e.g. ``lambda n, h, w: vision.video_frame_size(n, h, w, budget)``) each kept frame is resized as soon as
    it is decoded, exactly as ``vision.video_input`` would resize it, so memory holds only small frames.
    Raises ``VisionError`` for data that is not a video, a video over ``max_seconds`` or over ``max_pixels``
    per frame, or too few frames.
    """
    import av

    try:
        with av.open(_open(source)) as container:
            if not container.streams.video:
                raise VisionError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            video_fps = float(stream.average_rate or stream.guessed_rate or 0)
            if video_fps <= 0:
                raise VisionError("video has no frame rate")
            _check_frame_pixels(stream, max_pixels)
            total = _frame_count(container, stream, video_fps, max_seconds)
            wanted = sample_frame_indices(total, video_fps, fps, max_frames)
            resize = _resizer(frame_size, len(wanted), stream)
            frames = _decode_wanted(container, stream, wanted, resize)
    except VisionError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VisionError(f"not a decodable video ({_reason(exc)})") from exc
    return DecodedVideo(_pad_missing(frames, wanted), wanted, video_fps, total)


def _frame_count(container: Any, stream: Any, video_fps: float, max_seconds: float) -> int:
    """Frames in the stream, from the header, the duration, or (last resort) by counting packets."""
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000  # av.time_base
    if seconds is not None:
        _check_duration(seconds, max_seconds)
    total = stream.frames or (round(seconds * video_fps) if seconds else 0)
    if not total:  # no usable header: count packets (demuxing only, no decoding)
        total = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
    _check_duration(total / video_fps, max_seconds)
    return int(total)


def _check_frame_pixels(stream: Any, max_pixels: int | None) -> None:
    width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
    if max_pixels is not None and width * height > max_pixels:
        raise VisionError(f"video frames are {width}x{height} = {width * height} pixels, over the limit "
                          f"{max_pixels} ({knob('limits.max_image_pixels')})")


def _check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise VisionError(f"video lasts {seconds:.1f} s, over the limit {max_seconds:.0f} s "
                          f"({knob('limits.max_video_seconds')})")


def _resizer(frame_size: FrameSize | None, nframes: int, stream: Any) -> Callable[[np.ndarray], np.ndarray]:
    """Per-frame downscaling at decode time, only where it cannot change the final result.

    ``vision.video_input`` resizes again from the size it is given; smart resizing is not always idempotent
    (a size just under the minimum grows, then shrinks), so frames are pre-resized only when the target maps
    to itself and is smaller than the source. Otherwise they are kept as decoded.
    """
    height, width = stream.codec_context.height, stream.codec_context.width
    if frame_size is None or not height or not width:
        return lambda array: array
    target = frame_size(nframes, height, width)
    if target[0] * target[1] >= height * width or frame_size(nframes, *target) != target:
        return lambda array: array

    def resize(array: np.ndarray) -> np.ndarray:
        if array.shape[:2] == target:
            return array
        tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
        return resize_frames(tensor, *target)[0].to(torch.uint8).permute(1, 2, 0).numpy()

    return resize


def _safe_decode(container: Any, stream: Any) -> Iterator[Any]:
    """Frames packet by packet; an undecodable packet is skipped and a truncated container ends the stream."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.FFmpegError as exc:
            log.warning("video container ends early: %s", exc)
            packet = None
        try:
            yield from stream.decode(packet)  # None flushes the decoder's delayed frames
        except av.error.FFmpegError as exc:
            log.warning("skipping an undecodable video packet: %s", exc)
        if packet is None:
            return


class _NoSeek(Exception):
    """Timestamps too irregular to seek by: decode every frame in order instead."""


def _decode_wanted(container: Any, stream: Any, wanted: list[int],
                   resize: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """The wanted frames, seeking past whole keyframe intervals where the timestamps allow it.

    One demuxing pass (no decoding) lists every packet's timestamp and the keyframes: frame ``i`` is the one
    with the ``i``-th smallest timestamp, as when counting decoded frames. Between two wanted frames the
    decoder jumps to the last keyframe before the next one when that keyframe lies ahead, so a long video
    costs about one keyframe interval per sampled frame instead of every frame. Same frames either way.
    """
    try:
        pts, keys = _packet_index(container, stream)
        return _collect_seeking(container, stream, wanted, resize, pts, keys)
    except _NoSeek:
        container.seek(0)
        return _collect(_safe_decode(container, stream), wanted, resize)


def _packet_index(container: Any, stream: Any) -> tuple[list[int], list[int]]:
    import av

    pts: list[int] = []
    keys: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            if packet.pts is None:
                raise _NoSeek
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except av.error.FFmpegError:
        pass  # a truncated file: index what can be read
    if not keys or len(set(pts)) != len(pts):
        raise _NoSeek
    return sorted(pts), sorted(keys)


def _collect_seeking(container: Any, stream: Any, wanted: list[int], resize: Callable[[np.ndarray], np.ndarray],
                     pts: list[int], keys: list[int]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    targets = [pts[i] for i in wanted if i < len(pts)]
    frames: Iterator[Any] = iter(())
    position: int | None = None  # timestamp of the last decoded frame
    while len(out) < len(targets):
        target = targets[len(out)]
        key = keys[max(bisect.bisect_right(keys, target) - 1, 0)]
        if position is None or key > position:
            container.seek(key, stream=stream, backward=True)
            frames, position = _safe_decode(container, stream), None
        frame = _next_at(frames, target, position is None)
        if frame is None:
            break
        position = frame.pts
        array = resize(frame.to_ndarray(format="rgb24"))
        while len(out) < len(targets) and targets[len(out)] <= frame.pts:
            out.append(array)
    return out


def _next_at(frames: Iterator[Any], target: int, after_seek: bool) -> Any:
    """The first frame at or after ``target`` (None at the end of the stream)."""
    for frame in frames:
        if frame.pts is None or (after_seek and frame.pts > target):
            raise _NoSeek  # no timestamp, or the seek landed past the target
        after_seek = False
        if frame.pts >= target:
            return frame
    return None


def _collect(frames_iter: Iterator[Any], wanted: list[int],
             resize: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """Keep frames at the ``wanted`` indices (which may repeat), decoding each frame once."""
    out: list[np.ndarray] = []
    pos = 0
    for i, frame in enumerate(frames_iter):
        if pos >= len(wanted):
            break
        if i < wanted[pos]:
            continue
        array = resize(frame.to_ndarray(format="rgb24"))
        while pos < len(wanted) and wanted[pos] <= i:
            out.append(array)
            pos += 1
    return out


def _pad_missing(frames: list[np.ndarray], wanted: list[int]) -> torch.Tensor:
    """Best effort for a truncated file: repeat the last frame when at least half of the sampled ones decoded."""
    if len(frames) * 2 < len(wanted):
        raise VisionError(f"video is truncated or corrupt: {len(frames)} of {len(wanted)} sampled frames decode")
    if len(frames) < len(wanted):
        log.warning("video ends early: %d of %d sampled frames decoded, repeating the last", len(frames),
                    len(wanted))
        frames = frames + [frames[-1]] * (len(wanted) - len(frames))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with an alpha channel composited on white (qwen-vl-utils ``to_rgb``)."""
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def sample_frame_count(total_frames: int, video_fps: float, fps: float, max_frames: int) -> int:
    """qwen-vl-utils ``smart_nframes``: frames to sample from a file (even, 4..max_frames, ≤ total)."""
    min_frames = 4
    max_frames = max(FRAME_FACTOR, max_frames // FRAME_FACTOR * FRAME_FACTOR)
    n = total_frames / video_fps * fps
    n = min(min(max(n, min_frames), max_frames), total_frames)
    n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= total_frames:
        raise VisionError(f"video has {total_frames} frames; at least {FRAME_FACTOR} are needed")
    return n


def sample_frame_indices(total_frames: int, video_fps: float, fps: float, max_frames: int) -> list[int]:
    """Which frames of a file to decode: ``round(linspace(0, total-1, n))``."""
    n = sample_frame_count(total_frames, video_fps, fps, max_frames)
    return torch.linspace(0, total_frames - 1, n).round().long().tolist()


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, C, H, W) → float (T, C, h, w): bicubic, antialiased, clamped and rounded like torchvision."""
    out = F.interpolate(frames.to(torch.float32), size=(height, width), mode="bicubic",
                        antialias=True, align_corners=False)
    return out.clamp_(0, 255).round_()


def sample_frame_list(n: int, max_frames: int) -> list[int]:
    """Which of ``n`` listed frames to keep (the official ``sample_frames``: int(linspace))."""
    if n <= max_frames:
        return list(range(n))
    return np.linspace(0, n - 1, max_frames, dtype=int).tolist()
