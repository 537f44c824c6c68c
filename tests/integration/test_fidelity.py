"""Preprocessing fidelity: images are read as stored, as the official preprocessing (qwen-vl-utils) reads them,
whether they come as a path, a file:// URL, an s3:// object or a PIL image, alone or as video frames."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from PIL import Image

from rerankq.cli.samples import image_bytes, noise_image
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side, VisionBudget
from rerankq.models.qwen3vl.vision import QwenVision
from rerankq.settings import Settings
from tests.integration.conftest import MEDIA_BUCKET

ORIENTATION = 0x0112


def _jpeg(image: Image.Image, orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    return image_bytes(image, "JPEG", quality=95, exif=exif)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory, s3: Any, media: dict[str, str]) -> dict[str, Any]:
    """A 160x96 JPEG tagged orientation 6 (display rotated 90°), as a path, file:// URL, s3:// object and PIL
    image; the same pixels untagged; and the pixels turned upright."""
    root = tmp_path_factory.mktemp("exif")
    pixels = noise_image(160, 96, seed=7)
    files = {"tagged": _jpeg(pixels, 6), "untagged": _jpeg(pixels), "upright": _jpeg(pixels.transpose(
        Image.Transpose.ROTATE_270))}
    for name, data in files.items():
        (root / f"{name}.jpg").write_bytes(data)
    s3.put_object(Bucket=MEDIA_BUCKET, Key="exif/tagged.jpg", Body=files["tagged"])
    path = root / "tagged.jpg"
    return {"path": str(path), "url": f"file://{path}", "s3": f"s3://{MEDIA_BUCKET}/exif/tagged.jpg",
            "pil": Image.open(path), "untagged": str(root / "untagged.jpg"), "upright": str(root / "upright.jpg")}


def test_every_source_of_the_same_file_scores_alike_and_as_stored(reference: Callable[..., list[float]],
                                                                  photo: dict[str, Any]) -> None:
    sources = ("path", "url", "s3", "pil", "untagged", "upright")
    scores = dict(zip(sources, reference({"query": "a photo", "documents": [{"image": photo[s]} for s in sources]}),
                      strict=True))
    for source in ("url", "s3", "pil", "untagged"):  # the orientation tag changes nothing
        assert scores[source] == pytest.approx(scores["path"], abs=1e-6), source
    assert scores["upright"] != pytest.approx(scores["path"], abs=1e-4)  # rotating would have moved the score


def test_frame_lists_of_paths_and_of_pil_images_score_alike(reference: Callable[..., list[float]],
                                                            photo: dict[str, Any]) -> None:
    frames = [[photo["path"]] * 2, [photo["pil"]] * 2, [photo["s3"]] * 2, [photo["untagged"]] * 2]
    scores = reference({"query": "a clip", "documents": [{"video": f} for f in frames]})
    assert scores[1:] == pytest.approx([scores[0]] * 3, abs=1e-6)


def test_exif_transpose_setting_rotates_every_source_alike(photo: dict[str, Any]) -> None:
    settings = Settings(allow_file_urls=True, s3_endpoint_url=None, media={"exif_transpose": True})
    sides = [Side(images=[photo["path"]]), Side(images=[photo["pil"]]), Side(images=[photo["upright"]]),
             Side(videos=[[photo["path"]] * 2]), Side(videos=[[photo["pil"]] * 2])]
    with MediaResolver(settings, QwenVision()) as resolver:
        image, pil, upright, frames, pil_frames = (s.vision[0] for s in resolver.resolve_sides(sides, VisionBudget()))
    assert image.grid_thw == pil.grid_thw == upright.grid_thw and image.grid_thw[1] > image.grid_thw[2]  # portrait
    assert torch.equal(image.pixel_values, pil.pixel_values)
    assert torch.equal(frames.pixel_values, pil_frames.pixel_values)
