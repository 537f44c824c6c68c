"""The seed-compatible API accepts what the official script accepts and scores like the scorer does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rerankq.cli.samples import image_bytes, mp4_bytes, noise_image
from rerankq.errors import MediaError, PairTooLong
from rerankq.media.decode import decode_video
from rerankq.media.sides import ResolvedSide, VisionBudget
from rerankq.models import DocumentsFailed, Qwen3VLReranker
from rerankq.models.qwen3vl.vision import frame_list_input, image_input, video_input

INSTRUCTION = "Find the product."


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Qwen3VLReranker:
    return Qwen3VLReranker(model_name_or_path=str(tiny_model_dir), torch_dtype=torch.float32, device="cpu")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    paths = {"q": root / "q.png", "a": root / "a.jpg", "clip": root / "clip.mp4"}
    paths["q"].write_bytes(image_bytes(noise_image(120, 90, seed=1)))
    paths["a"].write_bytes(image_bytes(noise_image(200, 150, seed=2)))
    paths["clip"].write_bytes(mp4_bytes(seconds=4.0, fps=10))
    for i in range(3):
        paths[f"f{i}"] = root / f"f{i}.png"
        paths[f"f{i}"].write_bytes(image_bytes(noise_image(64, 48, seed=10 + i)))
    return paths


def test_process_mixed_inputs_equals_the_scorer(model: Qwen3VLReranker, media: dict[str, Path]) -> None:
    pil = noise_image(90, 90, seed=3)
    frames = [str(media[f"f{i}"]) for i in range(3)]
    scores = model.process({
        "instruction": INSTRUCTION,
        "query": {"text": "red backpack", "image": str(media["q"])},
        "documents": [
            {"text": "a red nylon backpack"},
            {"image": pil},
            {"image": f"file://{media['a']}", "text": "caption"},
            {"video": str(media["clip"])},
            {"video": frames},
        ],
        "fps": 1.0,
    })
    assert len(scores) == 5 and all(0 <= s <= 1 for s in scores)

    # The same pairs built by hand from the lower layers.
    b = VisionBudget()
    decoded = [noise_image(64, 48, seed=10 + i) for i in range(3)]
    clip = decode_video(media["clip"], b.fps, b.max_frames)
    query = ResolvedSide(texts=["red backpack"], vision=[image_input(noise_image(120, 90, seed=1), b)])
    docs = [
        ResolvedSide(texts=["a red nylon backpack"]),
        ResolvedSide(vision=[image_input(pil, b)]),
        ResolvedSide(texts=["caption"], vision=[image_input(noise_image(200, 150, seed=2), b)]),
        ResolvedSide(vision=[video_input(clip.frames, clip.indices, clip.fps, b)]),
        ResolvedSide(vision=[frame_list_input(decoded, b)]),
    ]
    expected = [model.model.forward([model.model.prepare(INSTRUCTION, query, d)])[0] for d in docs]
    assert scores == pytest.approx(expected, abs=1e-5)


def test_empty_inputs_give_no_scores(model: Qwen3VLReranker) -> None:
    assert model.process({"query": {}, "documents": [{"text": "x"}]}) == []
    assert model.process({"query": {"text": "q"}, "documents": []}) == []


def test_unreadable_media_is_an_error_not_a_null_prompt(model: Qwen3VLReranker, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"missing\.png"):
        model.process({"query": {"text": "q"}, "documents": [{"image": str(tmp_path / "missing.png")}]})


def test_strings_are_text_sides(model: Qwen3VLReranker) -> None:
    short = model.process({"query": "red backpack", "documents": ["a red nylon backpack", "a blue tent"]})
    full = model.process({"query": {"text": "red backpack"},
                          "documents": [{"text": "a red nylon backpack"}, {"text": "a blue tent"}]})
    assert short == full


def _failing_documents(tmp_path: Path) -> tuple[list[Any], str, str]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    return [{"text": "ok"}, {"image": str(missing)}, {"image": str(corrupt)}, "fine"], str(missing), str(corrupt)


def test_failing_documents_are_listed_in_one_error_after_trying_them_all(model: Qwen3VLReranker,
                                                                         tmp_path: Path) -> None:
    documents, missing, corrupt = _failing_documents(tmp_path)
    with pytest.raises(DocumentsFailed) as err:
        model.process({"query": "q", "documents": documents})
    assert isinstance(err.value, MediaError)
    assert sorted(err.value.errors) == [1, 2]
    assert str(err.value) == (f"documents: 2 of 4 cannot be scored: documents[1]: {missing}: no such file; "
                              f"documents[2]: {corrupt}: not a decodable image (unrecognised image format)")


def test_errors_none_scores_the_rest_and_gives_none_for_the_failing(model: Qwen3VLReranker, tmp_path: Path) -> None:
    documents, _, _ = _failing_documents(tmp_path)
    scores = model.process({"query": "q", "documents": documents}, errors="none")
    assert (scores[1], scores[2]) == (None, None)
    assert [scores[0], scores[3]] == pytest.approx(model.process({"query": "q", "documents": ["ok", "fine"]}),
                                                   abs=1e-6)


def test_a_pair_too_long_is_a_media_error_of_its_document(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert issubclass(PairTooLong, MediaError)
    large = tmp_path / "large.png"
    large.write_bytes(image_bytes(noise_image(640, 480, seed=5)))  # 300 visual tokens
    short = Qwen3VLReranker(str(tiny_model_dir), max_length=64, torch_dtype=torch.float32, device="cpu")
    request = {"query": "q", "documents": ["short", {"image": str(large)}]}
    with pytest.raises(DocumentsFailed, match=r"^documents: 1 of 2 cannot be scored: documents\[1\]: \d+ special "
                                              r"and vision tokens exceed max_length 64$"):
        short.process(request)
    scores = short.process(request, errors="none")
    assert scores[1] is None and 0 <= scores[0] <= 1
