"""Vision preprocessing equals the standard transformers path where it can run here (PIL backend), and
applies the official budgets (image tokens, video frames, total video tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from rerankq.media import decode
from rerankq.media.sides import VisionBudget, VisionError
from rerankq.models.qwen3vl import VIDEO_MAX_TOKENS, vision

RNG = np.random.default_rng(0)


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(RNG.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


@pytest.fixture(scope="module")
def hf_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3)


@pytest.mark.parametrize(("h", "w"), [(10, 10), (32, 32), (100, 80), (480, 640), (1080, 1920), (4000, 3000),
                                      (33, 6000)])
def test_smart_resize_matches_transformers(h: int, w: int) -> None:
    lo, hi = 4 * 32 * 32, 1800 * 32 * 32
    assert vision.smart_resize(h, w, 32, lo, hi) == hf_smart_resize(h, w, factor=32, min_pixels=lo, max_pixels=hi)


def test_smart_resize_follows_qwen_vl_utils_for_thin_images() -> None:
    # qwen-vl-utils (the official path) rounds each side up to one factor; transformers' own resize differs
    # here (it gives 32x768), but the official script resizes with qwen-vl-utils and tells the processor not to.
    assert vision.smart_resize(7, 1000, 32, 4 * 32 * 32, 1800 * 32 * 32) == (32, 992)


@pytest.mark.parametrize("size", [(100, 80), (640, 480), (31, 97), (2000, 1500), (48, 4000)])
def test_image_pixels_and_grid_match_the_pil_processor(size: tuple[int, int], hf_processor) -> None:  # type: ignore
    image = noise(*size)
    ours = vision.image_input(image, VisionBudget())
    resized = vision.resize_image(image, 4, 1800)
    ref = hf_processor(images=[resized], do_resize=False, return_tensors="pt")
    assert ours.grid_thw == tuple(ref["image_grid_thw"][0].tolist())
    assert ours.pixel_values.dtype == torch.uint8  # normalised on the device, by the scorer
    assert torch.allclose(vision.normalize(ours.pixel_values), ref["pixel_values"].float(), atol=1e-6)
    assert 4 <= ours.num_tokens <= 1800


def test_image_token_bounds() -> None:
    assert vision.image_input(noise(8, 8), VisionBudget()).num_tokens == 4  # upscaled to the minimum
    big = vision.image_input(noise(3000, 3000), VisionBudget())
    assert big.num_tokens <= 1800 and big.grid_thw[1] % 2 == 0


def test_transparency_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    assert decode.to_rgb(clear).getpixel((5, 5)) == (255, 255, 255)


def test_extreme_aspect_ratio_is_an_error() -> None:
    with pytest.raises(VisionError, match="aspect ratio"):
        vision.image_input(noise(5000, 20), VisionBudget())


def test_video_patches_use_the_image_layout() -> None:
    # Two identical frames must patchify exactly like the image path (which repeats one frame twice).
    image = vision.resize_image(noise(96, 64), 4, 1800)
    frame = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    values, grid = vision.patchify(torch.stack([frame, frame]))
    ref = vision.image_input(image, VisionBudget())
    assert grid == ref.grid_thw and torch.equal(values, ref.pixel_values)


@pytest.mark.parametrize(("total", "fps_in", "fps", "max_frames", "expected"), [
    (300, 30.0, 1.0, 64, 10),    # 10 s at 1 fps
    (30, 30.0, 1.0, 64, 4),      # 1 s: at least 4 frames
    (3000, 30.0, 1.0, 64, 64),   # 100 s: capped
    (3000, 30.0, 1.0, 63, 62),   # cap rounded down to even
    (5, 30.0, 1.0, 64, 4),
])
def test_frame_count(total: int, fps_in: float, fps: float, max_frames: int, expected: int) -> None:
    assert decode.sample_frame_count(total, fps_in, fps, max_frames) == expected


def test_frame_indices_span_the_video() -> None:
    assert decode.sample_frame_indices(300, 30.0, 1.0, 64) == [0, 33, 66, 100, 133, 166, 199, 233, 266, 299]


def test_video_token_budget_holds_for_long_videos() -> None:
    budget = VisionBudget()
    for n, (h, w) in [(64, (1080, 1920)), (64, (720, 1280)), (16, (1080, 1920)), (4, (2160, 3840))]:
        rh, rw = vision.video_frame_size(n, h, w, budget)
        tokens = (n // 2) * (rh // 32) * (rw // 32)
        assert tokens <= VIDEO_MAX_TOKENS, (n, h, w, tokens)  # the model's own budget (the field left unset)


def test_video_input_shapes_and_timestamps() -> None:
    frames = torch.from_numpy(RNG.integers(0, 256, (4, 3, 120, 160), dtype=np.uint8))
    item = vision.video_input(frames, [0, 10, 20, 29], 10.0, VisionBudget())
    t, h, w = item.grid_thw
    assert t == 2 and item.pixel_values.shape == (t * h * w, 3 * 2 * 16 * 16)
    assert item.timestamps == pytest.approx([0.5, 2.45])


def test_frame_list_sampling_and_timestamps() -> None:
    assert decode.sample_frame_list(5, 64) == [0, 1, 2, 3, 4]
    assert decode.sample_frame_list(100, 4) == [0, 33, 66, 99]
    item = vision.frame_list_input([noise(64, 48) for _ in range(3)], VisionBudget())
    assert item.grid_thw[0] == 2  # 3 frames padded to 4
    assert item.timestamps == [0.25, 1.25]


def test_resize_frames_matches_torch_bicubic_antialias_rounding() -> None:
    frames = torch.from_numpy(RNG.integers(0, 256, (2, 3, 50, 70), dtype=np.uint8))
    out = decode.resize_frames(frames, 32, 64)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255
    assert torch.equal(out, out.round())
