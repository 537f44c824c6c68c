"""Generated sample media (demo, benchmarks, tests): deterministic images and a real short mp4 (PyAV)."""

from __future__ import annotations

import io
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
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream: Any = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            base = (np.arange(width)[None, :, None] * 2 + i * 8) % 256
            frame = (base + rng.integers(0, 40, (height, width, 3))).clip(0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
