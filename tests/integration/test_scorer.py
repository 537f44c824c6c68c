"""The scorer on the real Qwen3-VL architecture (tiny random weights, fp32, CPU).

Batched scores equal one-pair-at-a-time scores for mixed text / image / video batches; a fixed set of
pairs has pinned scores; the checkpoint loads the same from a directory, from S3 and as random weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rerankq.cli.samples import mp4_bytes, noise_image
from rerankq.media.decode import decode_video
from rerankq.media.sides import ResolvedSide, VisionBudget
from rerankq.models.batching import score_all
from rerankq.models.loading import LoadOptions, load_model
from rerankq.models.qwen3vl.pairs import PreparedPair
from rerankq.models.qwen3vl.preparing import PairPreparer
from rerankq.models.qwen3vl.vision import frame_list_input, image_input, video_input

BUDGET = VisionBudget()
INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


def mixed_pairs(preparer: PairPreparer) -> list[PreparedPair]:
    clip = decode_video(mp4_bytes(seconds=3.0, fps=10), BUDGET.fps, BUDGET.max_frames)
    video = video_input(clip.frames, clip.indices, clip.fps, BUDGET)
    frames = frame_list_input([noise_image(80, 64, seed=s) for s in range(5)], BUDGET)
    queries = [
        ResolvedSide(texts=["a blue nylon backpack with a bottle pocket"]),
        ResolvedSide(texts=["red shoes"], vision=[image_input(noise_image(120, 90, seed=1), BUDGET)]),
    ]
    documents = [
        ResolvedSide(texts=["Lightweight trail backpack, nylon, side bottle pocket"]),
        ResolvedSide(vision=[image_input(noise_image(300, 200, seed=2), BUDGET)]),
        ResolvedSide(vision=[video]),
        ResolvedSide(vision=[frames, image_input(noise_image(64, 64, seed=3), BUDGET)], texts=["caption"]),
        ResolvedSide(texts=["a much longer document " * 30]),
        ResolvedSide(),
    ]
    return [preparer.prepare(INSTRUCTION, q, d) for q in queries for d in documents]


@pytest.fixture(scope="module")
def pairs(tiny_scorer) -> list[PreparedPair]:  # type: ignore[no-untyped-def]
    return mixed_pairs(PairPreparer(tiny_scorer.tokenizer))


def test_batched_scores_equal_single_pair_scores(tiny_scorer, pairs: list[PreparedPair]) -> None:  # type: ignore
    single = [tiny_scorer.forward([p])[0] for p in pairs]
    batched = tiny_scorer.forward(pairs)  # one pass, all kinds mixed, left padding
    lengths = [p.length for p in pairs]
    planned = score_all(tiny_scorer.forward, pairs, lengths, max_tokens=2048, max_pairs=5)  # several passes
    assert max(abs(a - b) for a, b in zip(single, batched, strict=True)) <= 1e-5
    assert max(abs(a - b) for a, b in zip(single, planned, strict=True)) <= 1e-5
    assert len({round(s, 4) for s in single}) > len(single) // 2  # the pairs really differ


# Pinned on torch 2.13.0 + transformers 5.23.0, tiny checkpoint seed 0. A change here means the prompt,
# the preprocessing or the model path changed: find out why before re-pinning.
PINNED = [
    0.501943, 0.978995, 0.104881, 0.913571, 0.901297, 0.346976,
    0.888149, 0.991845, 0.129918, 0.930282, 0.864245, 0.414404,
]


def test_pinned_scores(tiny_scorer, pairs: list[PreparedPair]) -> None:  # type: ignore[no-untyped-def]
    scores = score_all(tiny_scorer.forward, pairs, [p.length for p in pairs])
    assert scores == pytest.approx(PINNED, abs=1e-5)


def test_only_the_yes_minus_no_row_is_kept(tiny_model_dir: Path, tiny_scorer) -> None:  # type: ignore
    from safetensors.torch import load_file

    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    embed = weights["model.language_model.embed_tokens.weight"]  # tied head
    assert torch.equal(tiny_scorer.head, embed[9693] - embed[2152])
    assert not hasattr(tiny_scorer.backbone, "lm_head")


def test_loads_from_s3_like_from_a_directory(tiny_model_dir: Path, tiny_scorer, s3_server, s3,  # type: ignore
                                             tmp_path: Path, pairs: list[PreparedPair]) -> None:
    s3.create_bucket(Bucket="models")
    for path in tiny_model_dir.iterdir():
        s3.upload_file(str(path), "models", f"rerankers/tiny/{path.name}")
    opts = LoadOptions(cache_dir=str(tmp_path), s3_endpoint_url=s3_server.url)
    from_s3 = load_model("s3://models/rerankers/tiny/", opts)
    assert from_s3.forward(pairs[:3]) == pytest.approx(tiny_scorer.forward(pairs[:3]), abs=1e-6)
    cached = list(tmp_path.iterdir())
    load_model("s3://models/rerankers/tiny/", opts)  # second load: from the cache, no new download
    assert list(tmp_path.iterdir()) == cached and (cached[0] / ".complete").exists()


def test_random_weights_of_the_real_architecture(pairs: list[PreparedPair]) -> None:
    scorer = load_model("random:tiny", LoadOptions(seed=1))
    scores = scorer.forward(pairs[:2])
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scorer.dtype == torch.float32 and "tiny" in scorer.name


def test_bad_specs_are_clear_errors(tmp_path: Path) -> None:
    from rerankq.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="random: takes"):
        load_model("random:70b")
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_model("no-such-thing")
