"""Generated sample media (demo, benchmarks, tests): deterministic images and a real short mp4 (PyAV)."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8).squeeze(), mode)


def image_bytes(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def mp4_bytes(seconds: float = 3.0, fps: int = 10, width: int = 96, height: int = 64, seed: int = 0) -> bytes:
    """A real H.264 (or MPEG-4) mp4 whose frames are a moving gradient plus noise."""
    import av

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream: Any = container.add_stream(video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            base = (np.arange(width)[None, :, None] * 2 + i * 8) % 256
            frame = (base + rng.integers(0, 40, (height, width, 3))).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def photo_bytes(width: int = 320, height: int = 240, fmt: str = "JPEG", seed: int = 0, mode: str = "RGB",
                **save: Any) -> bytes:
    """A photo-like test image (smooth gradient + noise, so it compresses like a photo)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // max(width, 1), ys * 255 // max(height, 1), np.full_like(xs, seed * 37 % 256)], -1)
    pixels = np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def video_codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def clip_bytes(seconds: float = 3.0, fps: int = 10, width: int = 160, height: int = 120,
              faststart: bool = False) -> bytes:
    """A real mp4 written with PyAV; frame ``i`` has mean grey level about ``(i * 4) % 192 + 32``."""
    import av

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
            stream: Any = container.add_stream(video_codec(), rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(round(seconds * fps)):
                noise = rng.integers(0, 64, (height, width, 3))
                frame = av.VideoFrame.from_ndarray((noise + (i * 4) % 192).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path.read_bytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
