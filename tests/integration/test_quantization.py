"""Weight quantization (``rerankq.models.quantization``) on the tiny checkpoint and ``random:small``, in process:
every CPU-capable mode loads, quantizes the language model's linears and nothing else, names itself, keeps
its scores apart in the cache, and agrees with full precision within the bounds below.

The bounds are measured (``python -m bench.quantization --model DIR|random:small``, same workload as
``_job`` here), then given about 1.5x headroom. Random weights are harsher than trained ones: the tiny model's
weights are drawn with std 0.3 (``TINY_INIT_STD``, to spread its scores), far wider than a trained layer's, so
rounding them moves its hidden states much more; ``random:small`` (std 0.02) has scores that crowd within a
few hundredths of each other, so any noise reorders them. A trained checkpoint keeps its ranking better than
either; the README's figures say which model each number comes from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bench.quantization import agreement
from rerankq.errors import ModelLoadError
from rerankq.media.sides import ResolvedSide, VisionBudget
from rerankq.models import quantization
from rerankq.models.loading import LoadOptions, load_model

CPU_MODES = ("int8", "int4", "bnb-8bit", "bnb-nf4")
# mode: (min Spearman per job, min mean top-10 overlap, max |Δ score|, max mean |Δ score|) against fp32, on the
# tiny checkpoint. Measured here (``_job``, 12 documents) and through a worker (test_quantized_worker's job, 11
# documents, an image query), rho / top-10 / max|Δ| / mean|Δ|:
#   int8      1.00 / 1.0 / 0.0072 / 0.0023   and  0.99 / 0.9 / 0.0091 / 0.0023
#   int4      0.90 / 0.8 / 0.074  / 0.037    and  0.96 / 0.9 / 0.24   / 0.088
#   bnb-8bit  1.00 / 1.0 / 0.017  / 0.0029   and  0.99 / 0.9 / 0.044  / 0.0091
#   bnb-nf4   0.98 / 1.0 / 0.38   / 0.18     and  1.00 / 1.0 / 0.11   / 0.028
# (with a query varied per run, the worker's int8 mean |Δ| reached 0.0051 and int4's max 0.44.) The 4-bit
# modes move the tiny model's scores by tenths: its std-0.3 weights are far wider than trained ones, and 4 bits
# (16 levels per group of 64) round them coarsely; the ranking still mostly holds.
TINY_BOUNDS = {
    "int8": (0.95, 0.8, 0.015, 0.008),
    "int4": (0.75, 0.7, 0.65, 0.25),
    "bnb-8bit": (0.95, 0.8, 0.07, 0.015),
    "bnb-nf4": (0.8, 0.8, 0.6, 0.28),
}
# Bytes of the quantized linears over their fp32 bytes: int8 one byte per weight plus a scale and zero point
# per row; int4 on the CPU one byte per value too (torchao packs int4 only for CUDA) plus a scale and zero
# point per 64; bnb-8bit int8 plus a scale per row; NF4 half a byte plus a (doubly quantized) absmax per 64
# and 1 KiB of code book per layer, which the tiny model's 64-wide layers feel (0.18; 0.14 on large layers).
LINEAR_RATIO = {"int8": 0.27, "int4": 0.3, "bnb-8bit": 0.27, "bnb-nf4": 0.2}


def _job(model: Any, docs: int = 12) -> list[Any]:
    """One job, text query, documents mixed: every third an image."""
    from rerankq.cli.samples import noise_image
    from rerankq.models.qwen3vl.vision import image_input

    words = ["red", "blue", "trail", "backpack", "bottle", "nylon", "leather", "city", "light", "heavy", "pocket",
             "strap", "zip", "water"]
    query = ResolvedSide(texts=["a blue nylon backpack with a bottle pocket"])
    sides = [ResolvedSide(vision=[image_input(noise_image(64, 64, seed=d), VisionBudget())]) if d % 3 == 2
             else ResolvedSide(texts=[" ".join(words[(d * 5 + i * (d % 4 + 1)) % len(words)] for i in range(24))])
             for d in range(docs)]
    return [model.prepare("Judge relevance.", query, side) for side in sides]


def _linear_bytes(model: Any, vision: bool) -> int:
    return sum(quantization.weights_bytes(m) for n, m in model.backbone.named_modules()
               if isinstance(m, torch.nn.Linear) and quantization.is_vision(n) == vision)


@pytest.fixture(scope="module")
def full(tiny_model_dir: Path) -> Any:
    return load_model(str(tiny_model_dir))


@pytest.mark.parametrize("mode", CPU_MODES)
def test_a_cpu_mode_quantizes_the_tiny_checkpoint_and_agrees_within_bounds(mode: str, tiny_model_dir: Path,
                                                                           full: Any) -> None:
    model = load_model(str(tiny_model_dir), LoadOptions(quantization=mode))
    assert model.name == f"{full.name} [{mode}]" and model.quantization == mode
    assert model.cache_identity() != full.cache_identity()
    assert f'"quantization": "{mode}"' in model.cache_identity()
    # The language model's linears shrank as the mode says; the vision tower's did not move.
    ratio = _linear_bytes(model, vision=False) / _linear_bytes(full, vision=False)
    assert ratio <= LINEAR_RATIO[mode], ratio
    assert _linear_bytes(model, vision=True) == _linear_bytes(full, vision=True)
    vision = [m for n, m in model.backbone.named_modules()
              if isinstance(m, torch.nn.Linear) and quantization.is_vision(n)]
    assert vision and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in vision)
    assert quantization.weights_bytes(model.backbone) < quantization.weights_bytes(full.backbone)

    got, ref = model.forward(_job(model)), full.forward(_job(full))
    a = agreement([ref], [got])
    rho, top, max_delta, mean_delta = TINY_BOUNDS[mode]
    assert a["spearman_min"] >= rho and a["top10_overlap"] >= top, a
    assert a["max_abs_delta"] <= max_delta and a["mean_abs_delta"] <= mean_delta, a
    assert a["max_abs_delta"] > 0  # it did quantize: a mode that changed nothing would score exactly the same


def test_quantizing_the_vision_tower_too_is_asked_for_and_named(tiny_model_dir: Path, full: Any) -> None:
    model = load_model(str(tiny_model_dir), LoadOptions(quantization="int8", quantize_vision=True))
    assert model.name == f"{full.name} [int8+vision]"
    assert _linear_bytes(model, vision=True) < 0.3 * _linear_bytes(full, vision=True)
    assert model.cache_identity() != load_model(str(tiny_model_dir), LoadOptions(quantization="int8")).cache_identity()


def test_a_pre_quantized_checkpoint_loads_as_it_comes(tiny_model_dir: Path, tmp_path: Path, full: Any) -> None:
    """A checkpoint saved quantized (here torchao int8 through transformers' ``TorchAoConfig``, as a published
    FP8 / NVFP4 one carries its compressed-tensors config) loads with ``none`` as its config says, is named by
    it, and refuses a second quantization."""
    import shutil

    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import Qwen3VLForConditionalGeneration, TorchAoConfig

    config = TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=["visual", "lm_head"])
    lm = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                         quantization_config=config)
    out = tmp_path / "tiny-int8"
    lm.save_pretrained(out)
    for path in tiny_model_dir.iterdir():
        if not path.name.startswith(("model", "config")):
            shutil.copy(path, out)  # tokenizer, processors, chat template
    model = load_model(str(out))
    assert model.name == "tiny-int8 [checkpoint:torchao]" and model.cache_identity() != full.cache_identity()
    assert _linear_bytes(model, vision=False) <= LINEAR_RATIO["int8"] * _linear_bytes(full, vision=False)
    a = agreement([full.forward(_job(full))], [model.forward(_job(model))])
    rho, top, max_delta, mean_delta = TINY_BOUNDS["int8"]  # the same int8 weight-only rounding
    assert a["spearman_min"] >= rho and a["top10_overlap"] >= top, a
    assert 0 < a["max_abs_delta"] <= max_delta and a["mean_abs_delta"] <= mean_delta, a
    with pytest.raises(ModelLoadError, match=r"RERANKQ_QUANTIZATION\)='int4': .* is already quantized "
                                             r"\(checkpoint:torchao\); set it to none"):
        load_model(str(out), LoadOptions(quantization="int4"))


def test_full_precision_keeps_its_name_and_cache_identity(full: Any) -> None:
    assert "[" not in full.name and full.quantization == "none" and "quantization" not in full.cache_identity()


@pytest.mark.parametrize(("mode", "needs"), [
    ("fp8", "a CUDA GPU with compute capability >= 9.0"),
    ("int3", "is not one of none, int8, int4, bnb-8bit, bnb-nf4, fp8"),
])
def test_a_mode_this_machine_cannot_run_fails_before_loading(mode: str, needs: str, tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model(str(tiny_model_dir), LoadOptions(quantization=mode))
    message = str(caught.value)
    assert "RERANKQ_QUANTIZATION" in message and needs in message and "\n" not in message


def test_a_missing_library_is_named_with_its_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ModelLoadError, match=r"RERANKQ_QUANTIZATION\)='bnb-nf4' needs bitsandbytes "
                                             r"\(pip install 'rerankq\[quant\]'\)"):
        quantization.check("bnb-nf4", "cpu", torch.float32)


def test_a_fake_model_has_nothing_to_quantize() -> None:
    with pytest.raises(ModelLoadError, match=r"RERANKQ_QUANTIZATION.*fake:hash has no weights"):
        load_model("fake:hash", LoadOptions(quantization="int8"))


def test_weights_bytes_counts_what_quantized_tensors_hold() -> None:
    linear = torch.nn.Linear(256, 128, bias=False)
    assert quantization.weights_bytes(linear) == 256 * 128 * 4
    holder = torch.nn.Sequential(linear)
    quantization.quantize(holder, "int8", "cpu")
    # int8 values, plus a float scale and an int8 zero point per output row (torchao's Int8Tensor)
    assert quantization.weights_bytes(holder) == 256 * 128 + 128 * 4 + 128
    eight = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=False))
    quantization.quantize(eight, "bnb-8bit", "cpu")  # its CB statistics are the weight's own storage: once
    assert quantization.weights_bytes(eight) == 256 * 128 + 128 * 4
    nf4 = torch.nn.Sequential(torch.nn.Linear(256, 128, bias=False))
    quantization.quantize(nf4, "bnb-nf4", "cpu")
    packed = 256 * 128 // 2  # plus absmax per 64 (one byte, doubly quantized), code books, a few floats
    assert packed + 256 * 128 // 64 < quantization.weights_bytes(nf4) < packed + 2048


def test_seed_keywords_pick_the_bitsandbytes_modes(tiny_model_dir: Path) -> None:
    from rerankq.models import Qwen3VLReranker

    model = Qwen3VLReranker(str(tiny_model_dir), device="cpu", load_in_4bit=True)
    assert model.model.name.endswith(" [bnb-nf4]")
    scores = model.process({"query": "a cat", "documents": ["a cat on a mat", {"text": "a dog"}]})
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    with pytest.raises(ValueError, match="disagree"):
        Qwen3VLReranker(str(tiny_model_dir), device="cpu", load_in_8bit=True, quantization="int4")


# random:small, measured on ``_job`` (16 documents), rho / top-10 / max|Δ| / mean|Δ|: int8 1.00 / 1.0 / 0.0013 /
# 0.0007; int4 0.89 / 0.9 / 0.088 / 0.061; bnb-8bit 0.99 / 1.0 / 0.0083 / 0.0043; bnb-nf4 0.82 / 0.9 / 0.13 /
# 0.10. Its scores all lie within 0.51-0.62, so a 4-bit shift of a few hundredths reorders them.
SMALL_BOUNDS = {
    "int8": (0.95, 0.9, 0.004, 0.002),
    "int4": (0.6, 0.7, 0.15, 0.1),
    "bnb-8bit": (0.9, 0.9, 0.015, 0.008),
    "bnb-nf4": (0.5, 0.7, 0.2, 0.15),
}


@pytest.mark.slow
def test_every_cpu_mode_agrees_on_random_small() -> None:
    full = load_model("random:small")
    ref = full.forward(_job(full, docs=16))
    for mode in CPU_MODES:
        model = load_model("random:small", LoadOptions(quantization=mode))
        assert model.name.endswith(f"[{mode}]")
        a = agreement([ref], [model.forward(_job(model, docs=16))])
        rho, top, max_delta, mean_delta = SMALL_BOUNDS[mode]
        assert a["spearman_min"] >= rho and a["top10_overlap"] >= top, (mode, a)
        assert 0 < a["max_abs_delta"] <= max_delta and a["mean_abs_delta"] <= mean_delta, (mode, a)
        del model


def test_an_embedding_model_quantizes_through_the_same_call(tiny_embed_dir: Path) -> None:
    """The embedding family's loader quantizes as the rerankers' do: named, in the cache identity, its vectors
    near full precision's and still unit length."""
    import numpy as np

    from rerankq.media.sides import ResolvedSide
    from rerankq.models.loading import LoadOptions, load_model

    full_model = load_model(str(tiny_embed_dir))
    quantized = load_model(str(tiny_embed_dir), LoadOptions(quantization="int8"))
    assert quantized.name.endswith("[int8]") and not full_model.name.endswith("]")
    assert '"quantization": "int8"' in quantized.cache_identity()
    assert "quantization" not in full_model.cache_identity()
    items = [ResolvedSide(texts=[t]) for t in ("a red chair", "a blue sky", "tax law in spain")]
    a = np.stack(full_model.forward([full_model.prepare("", None, i) for i in items]))
    b = np.stack(quantized.forward([quantized.prepare("", None, i) for i in items]))
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.9  # cosine to the full-precision vector
    assert np.abs(a - b).max() > 0  # the weights did change
