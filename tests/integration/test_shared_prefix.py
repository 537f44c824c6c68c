"""Shared-prefix scoring is exact: logits (h·w, before the sigmoid) with each job's prefix computed once equal
the one-pair-per-pass logits of ``Scorer.logits([pair])`` to 1e-5 in fp32, on the real Qwen3-VL architecture
(tiny random weights, real tokenizer), for every query kind against mixed documents, truncated pairs
included; and the shared path really ran (one prefix pass per job, prefix tokens saved)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from rerankq.cli.samples import mp4_bytes, noise_image
from rerankq.media.decode import decode_video
from rerankq.media.sides import ResolvedSide, VisionBudget
from rerankq.models.qwen3vl.pairs import PreparedPair
from rerankq.models.qwen3vl.preparing import PairPreparer
from rerankq.models.qwen3vl.sharing import JobPrefix, SharingStats, shared_prefix
from rerankq.models.qwen3vl.vision import frame_list_input, image_input, video_input

BUDGET = VisionBudget()
INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
TOL = 1e-5


def image(width: int, height: int, seed: int) -> ResolvedSide:
    return ResolvedSide(vision=[image_input(noise_image(width, height, seed=seed), BUDGET)])


@pytest.fixture(scope="module")
def sides() -> dict[str, ResolvedSide]:
    return build_sides()


def build_sides() -> dict[str, ResolvedSide]:
    """Queries of every kind, and documents of every kind (two same-size images, a long text, an empty one)."""
    clip = decode_video(mp4_bytes(seconds=3.0, fps=10), BUDGET.fps, BUDGET.max_frames)
    video = video_input(clip.frames, clip.indices, clip.fps, BUDGET)
    frames = frame_list_input([noise_image(80, 64, seed=s) for s in range(5)], BUDGET)
    return {
        "text": ResolvedSide(texts=["a blue nylon backpack with a bottle pocket"]),
        "image": ResolvedSide(texts=["red shoes"], vision=[image_input(noise_image(120, 90, seed=1), BUDGET)]),
        "video": ResolvedSide(vision=[video], texts=["a clip"]),
        "frames": ResolvedSide(vision=[frames]),
        "doc_text": ResolvedSide(texts=["Lightweight trail backpack, nylon, side bottle pocket"]),
        "doc_image": image(300, 200, seed=2),
        "doc_image_same_size": image(300, 200, seed=5),
        "doc_video": ResolvedSide(vision=[video]),
        "doc_frames_and_image": ResolvedSide(vision=[frames, image_input(noise_image(64, 64, seed=3), BUDGET)],
                                             texts=["caption"]),
        "doc_long": ResolvedSide(texts=["a much longer document " * 30]),
        "doc_empty": ResolvedSide(),
    }


def documents(sides: dict[str, ResolvedSide]) -> list[ResolvedSide]:
    return [side for name, side in sides.items() if name.startswith("doc_")]


def one_pair_per_pass(scorer, pairs: list[PreparedPair]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The reference: today's scorer, one pair per forward pass, no prefix."""
    assert all(p.prefix is None for p in pairs)
    return torch.cat([scorer.logits([p]) for p in pairs])


def shared(scorer, jobs: list[list[PreparedPair]]) -> tuple[torch.Tensor, list[JobPrefix]]:  # type: ignore
    """Each job's prefix attached, then *one* pass over all suffixes of all jobs (prefixes computed first)."""
    handles = [scorer.share_prefix(pairs) for pairs in jobs]
    assert all(h is not None for h in handles)
    return scorer.logits([p for pairs in jobs for p in pairs]), handles  # type: ignore[return-value]


def prepare(preparer: PairPreparer, query: ResolvedSide, docs: list[ResolvedSide]) -> Callable[[], list]:
    return lambda: [preparer.prepare(INSTRUCTION, query, d) for d in docs]


@pytest.mark.parametrize("kind", ["text", "image", "video", "frames"])
def test_every_query_kind_against_mixed_documents(tiny_scorer, sides, kind: str) -> None:  # type: ignore
    make = prepare(PairPreparer(tiny_scorer.tokenizer), sides[kind], documents(sides))
    expected = one_pair_per_pass(tiny_scorer, make())
    before = SharingStats(**vars(tiny_scorer.sharing))
    got, (handle,) = shared(tiny_scorer, [pairs := make()])
    assert (got - expected).abs().max().item() <= TOL
    assert len({round(x, 3) for x in expected.tolist()}) == len(expected)  # the documents really differ
    stats = tiny_scorer.sharing
    assert stats.prefix_passes - before.prefix_passes == 1
    assert stats.prefixes_computed - before.prefixes_computed == 1
    assert stats.prefix_tokens_saved - before.prefix_tokens_saved == handle.length * (len(pairs) - 1) > 0
    assert handle.kv is None and handle.pending == 0  # freed after the job's last suffix
    assert len(handle.vision) == (0 if kind == "text" else 1)  # the query's vision ran in the prefix pass


def test_truncated_pairs(tiny_scorer, sides) -> None:  # type: ignore[no-untyped-def]
    # 400 tokens: the video query's own vision fits, the long and visual documents are cut from their text.
    make = prepare(PairPreparer(tiny_scorer.tokenizer, max_length=400), sides["video"],
                   [sides["doc_text"], sides["doc_long"], sides["doc_image"], sides["doc_empty"]])
    expected = one_pair_per_pass(tiny_scorer, make())
    got, _ = shared(tiny_scorer, [pairs := make()])
    assert [p.truncated for p in pairs] == [False, True, True, False]
    assert (got - expected).abs().max().item() <= TOL


def test_a_query_cut_by_truncation(tiny_scorer, sides) -> None:  # type: ignore[no-untyped-def]
    # A long query cut differently per document (each document's special tokens take part of the budget).
    query = ResolvedSide(texts=["backpack nylon trail pocket " * 60])
    make = prepare(PairPreparer(tiny_scorer.tokenizer, max_length=200), query,
                   [sides["doc_text"], sides["doc_image"], sides["doc_long"]])
    expected = one_pair_per_pass(tiny_scorer, make())
    got, (handle,) = shared(tiny_scorer, [pairs := make()])
    assert all(p.truncated for p in pairs) and handle.length > 60
    assert (got - expected).abs().max().item() <= TOL


def test_several_jobs_and_a_whole_pair_in_one_pass(tiny_scorer, sides) -> None:  # type: ignore[no-untyped-def]
    preparer = PairPreparer(tiny_scorer.tokenizer)
    makes = [prepare(preparer, sides[k], documents(sides)[:4]) for k in ("text", "video", "image")]
    lone = prepare(preparer, sides["frames"], [sides["doc_image"]])
    expected = torch.cat([one_pair_per_pass(tiny_scorer, m()) for m in (*makes, lone)])
    jobs = [m() for m in makes]
    handles = [tiny_scorer.share_prefix(pairs) for pairs in jobs]
    whole = lone()
    assert tiny_scorer.share_prefix(whole) is None  # one document: sharing does not pay
    before = SharingStats(**vars(tiny_scorer.sharing))
    got = tiny_scorer.logits([p for pairs in jobs for p in pairs] + whole)
    assert len({h.length for h in handles}) == 3  # prefixes of different widths side by side
    # the three prefixes ran together in one left-padded pass, then every suffix and the whole pair in one
    assert tiny_scorer.sharing.prefix_passes - before.prefix_passes == 1
    assert tiny_scorer.sharing.prefixes_computed - before.prefixes_computed == 3
    assert (got - expected).abs().max().item() <= TOL


def test_boundary_is_on_token_ids_not_strings(tiny_scorer) -> None:  # type: ignore[no-untyped-def]
    # Qwen's BPE merges the ":" of "<Document>:" with punctuation after it (":-", ":=", "://"), so the ids of
    # the strings' common prefix "…<Document>:" are not a prefix of these pairs' ids.
    preparer = PairPreparer(tiny_scorer.tokenizer)
    query = ResolvedSide(texts=["stripes"])
    docs = [ResolvedSide(texts=[t]) for t in ("- a list item", "= an equation", "//example.com/zebra")]
    pairs = [preparer.prepare(INSTRUCTION, query, d) for d in docs]
    split = shared_prefix(pairs)
    rendered = preparer.render(INSTRUCTION, query, ResolvedSide(texts=["@"])).split("@")[0]
    string_boundary = tiny_scorer.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert rendered.endswith("<Document>:")
    assert all(p.input_ids[:len(string_boundary)] != string_boundary for p in pairs)
    tokens = tiny_scorer.tokenizer.convert_ids_to_tokens(pairs[0].input_ids[split.length - 2:split.length + 1])
    assert tokens == ["<Document", ">", ":-"]  # the shared prefix ends at ">", the ":" went with the documents
    got, _ = shared(tiny_scorer, [pairs])
    expected = one_pair_per_pass(tiny_scorer, [preparer.prepare(INSTRUCTION, query, d) for d in docs])
    assert (got - expected).abs().max().item() <= TOL


def test_same_size_images_are_not_taken_for_shared(tiny_scorer, sides) -> None:  # type: ignore[no-untyped-def]
    # Documents that are all images of one size have identical ids well into their pixels: the boundary
    # must stop at the first document image all the same.
    docs = [sides["doc_image"], sides["doc_image_same_size"], image(300, 200, seed=9)]
    make = prepare(PairPreparer(tiny_scorer.tokenizer), sides["image"], docs)
    pairs = make()
    first_document_image = pairs[0].input_ids.index(151655, pairs[0].input_ids.index(151653))
    split = shared_prefix(pairs)
    assert pairs[0].input_ids[:first_document_image + 5] == pairs[1].input_ids[:first_document_image + 5]
    assert split.items == 1 and split.length <= first_document_image
    expected = one_pair_per_pass(tiny_scorer, make())
    got, _ = shared(tiny_scorer, [pairs])
    assert (got - expected).abs().max().item() <= TOL


def test_stored_rope_deltas_do_not_matter(tiny_scorer, sides) -> None:  # type: ignore[no-untyped-def]
    # The model keeps rope_deltas as module state, reset by any other call: shared scoring never reads it.
    make = prepare(PairPreparer(tiny_scorer.tokenizer), sides["image"], documents(sides)[:3])
    expected = one_pair_per_pass(tiny_scorer, make())
    tiny_scorer.backbone.rope_deltas = torch.tensor([[1234]])
    got, _ = shared(tiny_scorer, [make()])
    assert (got - expected).abs().max().item() <= TOL


def test_eager_attention_takes_the_same_path(tiny_model_dir, sides) -> None:  # type: ignore[no-untyped-def]
    from rerankq.models.loading import LoadOptions, load_model

    scorer = load_model(str(tiny_model_dir), LoadOptions(attn_implementation="eager"))
    make = prepare(PairPreparer(scorer.tokenizer), sides["video"], documents(sides)[:4])
    expected = one_pair_per_pass(scorer, make())
    got, _ = shared(scorer, [make()])
    assert (got - expected).abs().max().item() <= TOL
