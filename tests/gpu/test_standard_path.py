"""Comparisons with the standard path that need torchvision / qwen-vl-utils / CUDA (none exist on the CPU
build machines; they run on a GPU machine: `pytest tests/gpu`). Each test skips when its piece is missing.

- our bicubic frame resize == torchvision's tensor resize (what qwen-vl-utils uses for videos)
- our video patches == transformers' Qwen3VLVideoProcessor (do_resize=False, as the official script)
- our image / video-file / frame-list preprocessing == qwen-vl-utils' fetch_image / fetch_video
- scores on CUDA (fp32) == scores on CPU; bf16 batched ≈ bf16 one pair per pass
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rerankq.cli.samples import mp4_bytes, noise_image
from rerankq.media import decode
from rerankq.media.decode import decode_video
from rerankq.media.sides import VisionBudget
from rerankq.models.qwen3vl import vision

BUDGET = VisionBudget()


def test_frame_resize_matches_torchvision() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 240, 320), dtype=np.uint8))
    for h, w in [(224, 288), (96, 128), (480, 640)]:
        ref = tvf.resize(frames, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()
        assert torch.equal(decode.resize_frames(frames, h, w), ref)


def test_video_patches_match_the_transformers_video_processor() -> None:
    pytest.importorskip("torchvision")
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    processor = Qwen3VLVideoProcessor()
    frames = decode.resize_frames(
        torch.from_numpy(np.random.default_rng(1).integers(0, 256, (6, 3, 120, 160), dtype=np.uint8)), 128, 160)
    ref = processor(videos=[frames], do_resize=False, do_sample_frames=False, return_tensors="pt",
                    cap_pixels_per_frame=False)
    values, grid = vision.patchify(vision.normalize(frames))
    assert list(grid) == ref["video_grid_thw"][0].tolist()
    assert torch.allclose(values, ref["pixel_values_videos"].float(), atol=1e-6)


def test_image_matches_qwen_vl_utils() -> None:
    qvu = pytest.importorskip("qwen_vl_utils.vision_process")
    for size in [(100, 80), (1920, 1080), (37, 500)]:
        image = noise_image(*size)
        ref = qvu.fetch_image({"image": image, "min_pixels": 4 * 32 * 32, "max_pixels": 1800 * 32 * 32},
                              image_patch_size=16)
        ours = vision.resize_image(image, 4, 1800)
        assert ours.size == ref.size and np.array_equal(np.asarray(ours), np.asarray(ref))


def test_exif_tagged_jpeg_is_read_as_stored_like_qwen_vl_utils(tmp_path: Path) -> None:
    qvu = pytest.importorskip("qwen_vl_utils.vision_process")
    from PIL import Image

    from rerankq.media.decode import decode_image

    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90°: qwen-vl-utils does not rotate, nor do we by default
    path = tmp_path / "tagged.jpg"
    noise_image(160, 96, seed=7).save(path, "JPEG", quality=95, exif=exif)
    ref = qvu.fetch_image({"image": f"file://{path}", "min_pixels": 4 * 32 * 32, "max_pixels": 1800 * 32 * 32},
                          image_patch_size=16)
    ours = vision.resize_image(decode_image(path.read_bytes()), 4, 1800)
    assert ours.size == ref.size and np.array_equal(np.asarray(ours), np.asarray(ref))


def test_video_file_matches_qwen_vl_utils_with_the_budget() -> None:
    qvu = pytest.importorskip("qwen_vl_utils.vision_process")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        path.write_bytes(mp4_bytes(seconds=12.0, fps=10, width=320, height=240))
        ele = {"video": f"file://{path}", "fps": 1.0, "max_frames": 64, "total_pixels": 7680 * 32 * 32}
        (ref, meta), _ = qvu.fetch_video(ele, image_patch_size=16, return_video_sample_fps=True,
                                         return_video_metadata=True)
        clip = decode_video(path, 1.0, 64)
        assert clip.indices == list(meta["frames_indices"])
        rh, rw = vision.video_frame_size(len(clip.indices), *clip.frames.shape[2:], BUDGET)
        ours = decode.resize_frames(clip.frames, rh, rw)
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max() <= 1.0  # decoder rounding (PyAV vs torchcodec/decord) may differ by 1


def test_frame_list_matches_qwen_vl_utils() -> None:
    qvu = pytest.importorskip("qwen_vl_utils.vision_process")
    images = [noise_image(300, 200, seed=s) for s in range(5)]
    ele = {"video": images, "total_pixels": 7680 * 32 * 32}
    (ref, _meta), _ = qvu.fetch_video(ele, image_patch_size=16, return_video_sample_fps=True,
                                      return_video_metadata=True)
    ours = vision.frame_list_input(images, BUDGET)
    values, grid = vision.patchify(ref.to(torch.uint8))
    assert ours.grid_thw == grid and torch.equal(ours.pixel_values, values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_equal_cpu_scores(tiny_model_dir: Path, tiny_scorer) -> None:  # type: ignore
    from rerankq.models.loading import LoadOptions, load_model
    from rerankq.models.qwen3vl.preparing import PairPreparer
    from tests.integration.test_scorer import mixed_pairs

    pairs = mixed_pairs(PairPreparer(tiny_scorer.tokenizer))
    cpu = tiny_scorer.forward(pairs)
    gpu32 = load_model(str(tiny_model_dir), LoadOptions(device="cuda", dtype="float32"))
    assert max(abs(a - b) for a, b in zip(cpu, gpu32.forward(pairs), strict=True)) <= 1e-4
    bf16 = load_model(str(tiny_model_dir), LoadOptions(device="cuda", dtype="bfloat16"))
    single = [bf16.forward([p])[0] for p in pairs]
    assert max(abs(a - b) for a, b in zip(single, bf16.forward(pairs), strict=True)) <= 5e-2
