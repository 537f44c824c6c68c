"""Shared-prefix scoring on CUDA (skipped without it; run with ``tests/gpu/device_check.sh``).

- fp32 with sdpa (TF32 off): shared logits equal one-pair-per-pass logits to 1e-5, as on the CPU;
- bf16 with sdpa: bf16 changes with any batch shape, so the check is top-k agreement (and a loose bound);
- flash-attention 2 (when installed, >= 2.1): suffixes packed with no padding through its varlen form
  (``cu_seqlens``, bottom-right causal), several jobs' prefixes in one pass; top-k agreement in bf16.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rerankq.media.sides import ResolvedSide
from rerankq.models.qwen3vl.pairs import PreparedPair
from rerankq.models.qwen3vl.prefix import uses_varlen
from rerankq.models.qwen3vl.preparing import PairPreparer
from tests.integration.test_shared_prefix import INSTRUCTION, build_sides, documents

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
KINDS = ("text", "image", "video", "frames")
TOP_K = 3


@pytest.fixture(scope="module")
def sides() -> dict[str, ResolvedSide]:
    return build_sides()


def load(model_dir: Path, dtype: str, attn: str):  # type: ignore[no-untyped-def]
    from rerankq.models.loading import LoadOptions, load_model

    return load_model(str(model_dir), LoadOptions(device="cuda", dtype=dtype, attn_implementation=attn))


def jobs(scorer, sides: dict[str, ResolvedSide]) -> list[list[PreparedPair]]:  # type: ignore[no-untyped-def]
    preparer = PairPreparer(scorer.tokenizer)
    return [[preparer.prepare(INSTRUCTION, sides[k], d) for d in documents(sides)] for k in KINDS]


def compare(scorer, sides: dict[str, ResolvedSide]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore
    """(one pair per pass, shared with all jobs' suffixes in one pass) logits, fp32 on the CPU."""
    single = torch.cat([scorer.logits([p]) for job in jobs(scorer, sides) for p in job]).cpu()
    shared_jobs = jobs(scorer, sides)
    for job in shared_jobs:
        assert scorer.share_prefix(job) is not None
    passes = scorer.sharing.prefix_passes
    shared = scorer.logits([p for job in shared_jobs for p in job]).cpu()
    assert scorer.sharing.prefix_passes - passes == len(KINDS)
    return single, shared


def top_k_agree(single: torch.Tensor, shared: torch.Tensor, per_job: int) -> bool:
    return all(set(a.topk(TOP_K).indices.tolist()) == set(b.topk(TOP_K).indices.tolist())
               for a, b in zip(single.split(per_job), shared.split(per_job), strict=True))


def test_fp32_sdpa_is_exact(tiny_model_dir: Path, sides) -> None:  # type: ignore[no-untyped-def]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    single, shared = compare(load(tiny_model_dir, "float32", "sdpa"), sides)
    assert (single - shared).abs().max().item() <= 1e-5


def test_bf16_sdpa_agrees_on_the_top(tiny_model_dir: Path, sides) -> None:  # type: ignore[no-untyped-def]
    single, shared = compare(load(tiny_model_dir, "bfloat16", "sdpa"), sides)
    assert top_k_agree(single, shared, len(documents(sides)))
    assert (single - shared).abs().max().item() <= 0.25


def test_flash_attention_2_varlen(tiny_model_dir: Path, sides) -> None:  # type: ignore[no-untyped-def]
    flash_attn = pytest.importorskip("flash_attn")
    from packaging.version import Version

    if Version(flash_attn.__version__) < Version("2.1"):
        pytest.skip("flash-attn < 2.1 aligns causal masks top-left; suffixes need bottom-right")
    scorer = load(tiny_model_dir, "bfloat16", "flash_attention_2")
    assert uses_varlen(scorer.backbone)
    single, shared = compare(scorer, sides)
    assert top_k_agree(single, shared, len(documents(sides)))
    reference, _ = compare(load(tiny_model_dir, "bfloat16", "sdpa"), sides)
    assert top_k_agree(reference, shared, len(documents(sides)))
