"""The one fake model of the project: deterministic scores without weights, for engine, queue and chaos tests
and for capacity benchmarks. Selected only by an explicit ``fake:`` model SPEC, and named as what it is: its
``name`` (hence every result's ``model``, the worker's log lines and metric labels) is the SPEC itself.

- ``fake:hash``: instant. A pair's score is derived from a SHA-256 of (instruction, query, document) content,
  so the same pair always gets the same score, on any worker.
- ``fake:text``: the same scores from a text-only model (``text`` on both sides, 512 tokens, no instruction),
  as a cross-encoder declares itself: jobs with images or videos are refused.
- ``fake:GPU-SIZE[@UTIL]`` (e.g. ``fake:h100-2b``, ``fake:h100-8b@0.4``): the same scores, and each forward
  pass sleeps (GIL released) for the time the FLOP model gives for that batch of the real model on that GPU
  at that utilisation (default 0.5): ``2 · params`` per token (vision tower added for visual tokens) plus
  attention over the padded length. A *modelled* device, not a measurement.

For chaos tests, a pair whose document text contains ``CRASH_MARKER`` ends the whole process the moment a
forward pass reaches it (``os._exit(137)``, as the kernel's OOM killer would): a poison job.

Media are fetched and decoded for real; an image counts as many visual tokens as Qwen3-VL would give it
(32 × 32 px each, 4 to 1800), so budgets, batching and errors behave as with the real model.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image

from rerankq.capabilities import ALL_MODALITIES, Capabilities
from rerankq.errors import ModelLoadError, PairTooLong
from rerankq.media.sides import ResolvedSide, VisionBudget, VisionError
from rerankq.models.contract import prepare_each
from rerankq.models.options import LoadOptions

# Dense bf16 TFLOP/s of the GPUs a capacity run may model.
GPU_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "l40s": 362.0, "l4": 121.0}
# GFLOP per text token (2 x language-model parameters without embeddings), extra GFLOP per visual token
# (the vision tower, 4 patches per merged token), layers x hidden for attention (the released checkpoints'
# shapes, as ``rerankq.models.qwen3vl.architectures`` spells them).
SIZES = {"2b": (2.82, 2.42, 28 * 2048), "8b": (13.9, 3.29, 36 * 4096)}
PROMPT_TOKENS = 60  # system prompt and chat markup around the two sides
CRASH_MARKER = "fake:crash-the-worker"
# Defaults of the two fake families: the visual one declares Qwen3-VL-Reranker's, the text one a cross-encoder's.
VISUAL_MAX_LENGTH, TEXT_MAX_LENGTH = 10240, 512
FAKE_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
FAKE_SCORING_VERSION = 1  # bump when a pair's fake score changes (what ``prepare`` digests)


@dataclass(frozen=True)
class FakeVision:
    """A decoded medium as the fake sees it: its content digest and the visual tokens it would cost."""

    kind: str
    digest: str
    tokens: int


@dataclass(frozen=True)
class FakePair:
    """A prepared pair: its length in tokens (visual ones counted apart) and the digest its score comes from."""

    length: int
    visual_tokens: int
    digest: bytes
    crash: bool = False
    prefix: None = None  # the fake never shares a prefix


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _image_tokens(width: int, height: int, budget: VisionBudget) -> int:
    if min(width, height) <= 0:
        raise VisionError(f"image has no pixels ({width}x{height})")
    return min(max(round(width * height / 1024), budget.image_min_tokens or 4), budget.image_max_tokens or 1800)


class FakePreprocessor:
    """Media → ``FakeVision``: digest of the pixels, Qwen3-VL's token count."""

    def image(self, image: Image.Image, budget: VisionBudget) -> FakeVision:
        return FakeVision("image", _digest(image.tobytes()), _image_tokens(*image.size, budget))

    def video(self, frames: torch.Tensor, indices: list[int], video_fps: float, budget: VisionBudget) -> FakeVision:
        t, _, h, w = frames.shape
        tokens = min(t // 2 * max(h * w // 1024, 1), budget.video_max_tokens or 7680)
        return FakeVision("video", _digest(frames.numpy().tobytes()), tokens)

    def frames(self, images: list[Image.Image], budget: VisionBudget) -> FakeVision:
        tokens = sum(_image_tokens(*im.size, budget) for im in images) // 2
        return FakeVision("video", _digest(b"".join(im.tobytes() for im in images)),
                          min(tokens, budget.video_max_tokens or 7680))

    def video_frame_size(self, nframes: int, height: int, width: int, budget: VisionBudget) -> tuple[int, int]:
        return height, width

    def nbytes(self, item: FakeVision) -> int:
        return 64


class FakeModel:
    """Deterministic scores from content digests; optionally the modelled time of a real GPU (see module doc)."""

    def __init__(self, spec: str, seconds_per_gflop: float = 0.0, size: str = "2b", max_length: int | None = None,
                 text_only: bool = False) -> None:
        self.name = spec
        max_length = max_length or (TEXT_MAX_LENGTH if text_only else VISUAL_MAX_LENGTH)
        if text_only:
            self.capabilities = Capabilities(task="rerank", max_length=max_length)
        else:
            self.capabilities = Capabilities(task="rerank", query=ALL_MODALITIES, documents=ALL_MODALITIES,
                                             max_length=max_length, instruction=FAKE_INSTRUCTION,
                                             image_min_tokens=4, image_max_tokens=1800, video_max_tokens=7680,
                                             max_frames=64)
        self.device = "modelled " + spec.split(":", 1)[1].split("-")[0] if seconds_per_gflop else "cpu (fake)"
        self.preprocessor = FakePreprocessor()
        self.seconds_per_gflop = seconds_per_gflop
        self.text_gflop, self.visual_gflop, self.attention_width = SIZES[size]
        self.max_length = max_length
        self.forward_calls = 0

    def prepare(self, instruction: str, query: ResolvedSide, document: ResolvedSide) -> FakePair:
        parts = [instruction, *query.texts, "\x00", *document.texts]
        parts += [v.digest for v in (*query.vision, *document.vision)]
        visual = sum(v.tokens for v in (*query.vision, *document.vision))
        text = sum(len(t) for t in (instruction, *query.texts, *document.texts)) // 4 + PROMPT_TOKENS
        if visual + PROMPT_TOKENS > self.max_length:
            raise PairTooLong(f"{visual} visual tokens exceed max_length {self.max_length}")
        length = min(text + visual, self.max_length)
        crash = any(CRASH_MARKER in t for t in document.texts)
        return FakePair(length, visual, hashlib.sha256("\x1f".join(parts).encode()).digest(), crash)

    def cap_texts(self, side: ResolvedSide, max_tokens: int) -> ResolvedSide:
        """Four characters to a token, as ``prepare`` counts them."""
        left, texts = 4 * max_tokens, []
        for text in side.texts:
            texts.append(text[:left])
            left = max(left - len(text), 0)
        return replace(side, texts=texts)

    def prepare_job(self, instruction: str, query: ResolvedSide,
                    documents: Sequence[ResolvedSide]) -> list[FakePair | Exception]:
        return prepare_each(self, instruction, query, documents)

    def forward(self, pairs: Sequence[FakePair]) -> list[float]:
        self.forward_calls += 1
        if any(p.crash for p in pairs):
            os._exit(137)  # a poison pair: the process dies mid-pass, as an OOM kill would end it
        if self.seconds_per_gflop:
            time.sleep(self.modelled_seconds(pairs))
        return [int.from_bytes(p.digest[:8], "big") / 2**64 for p in pairs]

    def cache_identity(self) -> str:
        """The SPEC's scores are digests of content: only the scheme and ``max_length`` (what fits) move them."""
        return f"fake-v{FAKE_SCORING_VERSION}|max_length={self.max_length}"

    def modelled_seconds(self, pairs: Sequence[FakePair]) -> float:
        """The FLOP-model time of one left-padded forward pass over ``pairs``."""
        padded = max(p.length for p in pairs)
        tokens = len(pairs) * padded
        visual = sum(p.visual_tokens for p in pairs)
        gflop = tokens * self.text_gflop + visual * self.visual_gflop
        gflop += 4 * self.attention_width * padded * tokens / 1e9
        return gflop * self.seconds_per_gflop


def load_fake(spec: str, opts: LoadOptions) -> FakeModel:
    """``fake:hash`` or ``fake:GPU-SIZE[@UTIL]`` (see the module doc)."""
    mode = spec.split(":", 1)[1].lower()
    if mode == "hash":
        return FakeModel(spec, max_length=opts.max_length)
    if mode == "text":
        return FakeModel(spec, max_length=opts.max_length, text_only=True)
    device, _, util_text = mode.partition("@")
    gpu, _, size = device.partition("-")
    try:
        util = float(util_text or 0.5)
    except ValueError:
        util = -1.0
    if gpu not in GPU_TFLOPS or size not in SIZES or not 0 < util <= 1:
        raise ModelLoadError(f"model SPEC {spec!r}: fake: takes hash, text or GPU-SIZE[@UTIL] with GPU one of "
                             f"{', '.join(GPU_TFLOPS)}, SIZE one of {', '.join(SIZES)}, 0 < UTIL <= 1 "
                             "(e.g. fake:h100-2b, fake:h100-8b@0.4)")
    return FakeModel(spec, 1.0 / (GPU_TFLOPS[gpu] * 1000 * util), size, opts.max_length)
