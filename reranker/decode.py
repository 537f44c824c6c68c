"""Bytes → pixels: images with Pillow, videos with PyAV (no torchvision, no decord).

Decoding errors become ``VisionError`` with a reason a user can act on; the media layer adds the
reference. Videos are decoded frame by frame and only the sampled frames are kept, so a long video never
sits in memory whole.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from reranker.vision import VisionError, sample_frame_indices

Source = bytes | str | Path


@dataclass
class DecodedVideo:
    """The sampled frames of a video file, uint8 (T, C, H, W), with their indices and the file's fps."""

    frames: torch.Tensor
    indices: list[int]
    fps: float
    total_frames: int


def _open(source: Source) -> io.BytesIO | str:
    return io.BytesIO(source) if isinstance(source, bytes) else str(source)


def decode_image(source: Source, max_pixels: int = 64_000_000) -> Image.Image:
    """Decode one image; EXIF orientation applied; the first frame of an animated image.

    Raises ``VisionError`` for data that is not an image, is truncated, or has more than ``max_pixels``
    source pixels (decompression-bomb guard, checked from the header before any pixel is decoded).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(_open(source))
            width, height = image.size
            if width * height > max_pixels:
                raise VisionError(f"image is {width}x{height} = {width * height} pixels, over the limit "
                                  f"{max_pixels} (limits.max_image_pixels)")
            image.seek(0)  # animated images: the first frame, documented behaviour
            image.load()
        return ImageOps.exif_transpose(image) or image
    except VisionError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise VisionError(f"image too large: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's ways of saying "not an image" / truncated
        raise VisionError(f"not a decodable image ({exc})") from exc


def decode_video(source: Source, fps: float, max_frames: int, max_seconds: float = 3600.0) -> DecodedVideo:
    """Decode the frames of a video file that ``fps`` and ``max_frames`` select (official sampling)."""
    import av

    try:
        with av.open(_open(source)) as container:
            if not container.streams.video:
                raise VisionError("no video stream")
            stream = container.streams.video[0]
            video_fps = float(stream.average_rate or stream.guessed_rate or 0)
            if video_fps <= 0:
                raise VisionError("video has no frame rate")
            total = stream.frames
            if not total and stream.duration is not None and stream.time_base is not None:
                total = round(float(stream.duration * stream.time_base) * video_fps)
            if not total:
                total = sum(1 for _ in container.decode(stream))
                container.seek(0)
            if total / video_fps > max_seconds:
                raise VisionError(f"video lasts {total / video_fps:.1f} s, over the limit {max_seconds:.0f} s "
                                  "(limits.max_video_seconds)")
            wanted = sample_frame_indices(total, video_fps, fps, max_frames)
            frames = _collect(container.decode(stream), wanted)
    except VisionError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise VisionError(f"not a decodable video ({exc})") from exc
    if not frames:
        raise VisionError("video has no decodable frames")
    if len(frames) < len(wanted):  # container claimed more frames than it holds: pad with the last one
        frames += [frames[-1]] * (len(wanted) - len(frames))
    return DecodedVideo(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(), wanted, video_fps, total)


def _collect(frames_iter, wanted: list[int]) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """Keep frames at the ``wanted`` indices (which may repeat), decoding each frame once."""
    out: list[np.ndarray] = []
    pos = 0
    for i, frame in enumerate(frames_iter):
        if pos >= len(wanted):
            break
        if i < wanted[pos]:
            continue
        array = frame.to_ndarray(format="rgb24")
        while pos < len(wanted) and wanted[pos] <= i:
            out.append(array)
            pos += 1
    return out
