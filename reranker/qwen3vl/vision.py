"""Vision preprocessing at the official budgets, without torchvision or qwen-vl-utils.

This reproduces what the official script gets from ``qwen_vl_utils.process_vision_info`` followed by the
Qwen3-VL processor (``do_resize=False``), step by step:

- images: RGB (transparency composited on white), resized with PIL bicubic so both sides are multiples of
  32 px within ``[min_tokens, max_tokens]`` visual tokens (one token = 32x32 px), then rescaled,
  normalised and cut into 16x16x2 patches;
- video files: ``nframes`` from ``fps`` and ``max_frames`` (even, at least 4), frame indices
  ``round(linspace(0, total-1, nframes))``, every frame resized (bicubic, antialiased, as torchvision does
  on tensors) within a per-frame budget that keeps the *whole* video under ``video_max_tokens`` (the
  official script forgets this budget for files; we apply it to files and frame lists alike);
- frame lists: sampled to ``max_frames``, each frame resized as an image at factor 64 (as qwen-vl-utils
  does), padded to an even count, then resized as a video;
- timestamps: one ``<t seconds>`` per pair of frames, the mean of the pair's times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from rerankq.media.decode import FRAME_FACTOR, resize_frames, to_rgb
from rerankq.media.sides import VisionBudget, VisionError
from rerankq.models.qwen3vl import IMAGE_MAX_TOKENS, IMAGE_MIN_TOKENS, VIDEO_MAX_TOKENS

PATCH = 16
MERGE = 2
TEMPORAL = 2
FACTOR = PATCH * MERGE  # 32 px per visual token side
MAX_RATIO = 200
VIDEO_MIN_TOKENS = 128  # per frame, qwen-vl-utils VIDEO_MIN_TOKEN_NUM
VIDEO_FRAME_MAX_TOKENS = 768  # per frame, qwen-vl-utils VIDEO_MAX_TOKEN_NUM
FRAME_LIST_FPS = 2.0  # qwen-vl-utils' assumed rate for frame lists
_MEAN = torch.tensor([0.5, 0.5, 0.5]) * (1.0 / (1 / 255))  # fused rescale+normalise, as transformers
_STD = torch.tensor([0.5, 0.5, 0.5]) * (1.0 / (1 / 255))


@dataclass
class VisionInput:
    """One image or video ready for the model: flat uint8 patches, its grid and, for videos, the timestamps."""

    kind: str  # "image" | "video"
    # (grid_t*grid_h*grid_w, 3*2*16*16) uint8: the resized pixels, patched but not yet normalised. Four
    # times smaller than float32 in caches, in rounds and on the way to the GPU; ``normalize`` runs on the
    # device, with the same float32 arithmetic as transformers' processors (so values are identical).
    pixel_values: torch.Tensor
    grid_thw: tuple[int, int, int]
    timestamps: list[float] | None = None

    @property
    def num_tokens(self) -> int:
        """Vision tokens this input adds to the prompt (pads only)."""
        t, h, w = self.grid_thw
        return t * h * w // (MERGE * MERGE)

    @property
    def nbytes(self) -> int:
        return self.pixel_values.numel() * self.pixel_values.element_size()


def smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """Both sides multiples of ``factor``, area within ``[min_pixels, max_pixels]``, aspect kept."""
    if min(height, width) <= 0:
        raise VisionError(f"image has no pixels ({width}x{height})")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_RATIO:
        raise VisionError(f"aspect ratio {ratio:.1f} exceeds the limit {MAX_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_image(image: Image.Image, min_tokens: int, max_tokens: int, factor: int = FACTOR) -> Image.Image:
    """qwen-vl-utils ``fetch_image``: RGB, then PIL bicubic to the smart-resized size."""
    image = to_rgb(image)
    width, height = image.size
    h, w = smart_resize(height, width, factor, min_tokens * factor * factor, max_tokens * factor * factor)
    return image.resize((w, h), resample=Image.Resampling.BICUBIC)


def normalize(values: torch.Tensor) -> torch.Tensor:
    """0..255 pixels (any layout, channels unmixed per element) → float32, as transformers' fused
    rescale + normalise: ``(x - 127.5) / 127.5``."""
    out = values.to(torch.float32, copy=True)  # one float32 buffer, normalised in place (batches are large)
    return out.sub_(_MEAN[0].to(out.device)).div_(_STD[0].to(out.device))


def patchify(frames: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(T, C, H, W) → (grid_t*grid_h*grid_w, C*2*16*16), in the Qwen3-VL processors' order (any dtype)."""
    if pad := -frames.shape[0] % TEMPORAL:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)], dim=0)
    t, c, h, w = frames.shape
    gt, gh, gw = t // TEMPORAL, h // PATCH, w // PATCH
    patches = frames.reshape(gt, TEMPORAL, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(gt * gh * gw, c * TEMPORAL * PATCH * PATCH).contiguous(), (gt, gh, gw)


def image_input(image: Image.Image, budget: VisionBudget) -> VisionInput:
    """A decoded image → model input (resized within the image token bounds)."""
    resized = resize_image(image, budget.image_min_tokens or IMAGE_MIN_TOKENS,
                           budget.image_max_tokens or IMAGE_MAX_TOKENS)
    array = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0)
    values, grid = patchify(array.expand(TEMPORAL, -1, -1, -1))
    return VisionInput("image", values, grid)


def video_frame_size(nframes: int, height: int, width: int, budget: VisionBudget) -> tuple[int, int]:
    """Per-frame size keeping the whole video within ``video_max_tokens`` (qwen-vl-utils ``fetch_video``)."""
    min_pixels = VIDEO_MIN_TOKENS * FACTOR * FACTOR
    total_pixels = (budget.video_max_tokens or VIDEO_MAX_TOKENS) * FACTOR * FACTOR
    max_pixels = max(min(VIDEO_FRAME_MAX_TOKENS * FACTOR * FACTOR, total_pixels / nframes * FRAME_FACTOR),
                     int(min_pixels * 1.05))
    return smart_resize(height, width, FACTOR, min_pixels, max_pixels)


def timestamps(indices: list[int], video_fps: float) -> list[float]:
    """One timestamp per temporal patch: the mean time of its two frames (Qwen3-VL processor)."""
    idx = list(indices)
    if pad := -len(idx) % TEMPORAL:
        idx += [idx[-1]] * pad
    secs = [i / video_fps for i in idx]
    return [(secs[i] + secs[i + TEMPORAL - 1]) / 2 for i in range(0, len(secs), TEMPORAL)]


def video_input(frames: torch.Tensor, indices: list[int], video_fps: float, budget: VisionBudget) -> VisionInput:
    """Sampled frames of a file, uint8 (T, C, H, W), with their source indices and the file's fps."""
    t, _, h, w = frames.shape
    rh, rw = video_frame_size(t, h, w, budget)
    values, grid = patchify(resize_frames(frames, rh, rw).to(torch.uint8))  # integral 0..255: lossless
    return VisionInput("video", values, grid, timestamps(indices, video_fps))


def frame_list_input(images: list[Image.Image], budget: VisionBudget) -> VisionInput:
    """A video given as already-sampled images (see ``sample_frame_list``)."""
    if not images:
        raise VisionError("frame list is empty")
    # qwen-vl-utils resizes each frame as an image at factor 64 with the image defaults, then the whole video.
    resized = [resize_image(im, 4, 16384, factor=2 * FACTOR) for im in images]
    sizes = {im.size for im in resized}
    if len(sizes) > 1:
        raise VisionError(f"frames of one video must share a size after resizing, got {sorted(sizes)}")
    if pad := -len(resized) % FRAME_FACTOR:
        resized += [resized[-1]] * pad
    frames = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
                          for im in resized])
    return video_input(frames, list(range(len(resized))), FRAME_LIST_FPS, budget)


class QwenVision:
    """The Qwen3-VL preprocessing as the media layer's ``Preprocessor`` (qwen-vl-utils' budgets)."""

    def image(self, image: Image.Image, budget: VisionBudget) -> VisionInput:
        return image_input(image, budget)

    def video(self, frames: torch.Tensor, indices: list[int], video_fps: float, budget: VisionBudget) -> VisionInput:
        return video_input(frames, indices, video_fps, budget)

    def frames(self, images: list[Image.Image], budget: VisionBudget) -> VisionInput:
        return frame_list_input(images, budget)

    def video_frame_size(self, nframes: int, height: int, width: int, budget: VisionBudget) -> tuple[int, int]:
        return video_frame_size(nframes, height, width, budget)

    def nbytes(self, item: VisionInput) -> int:
        return item.nbytes
