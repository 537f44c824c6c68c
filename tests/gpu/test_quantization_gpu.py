"""Weight quantization on CUDA (skipped without it; run with ``tests/gpu/device_check.sh``): every mode this GPU
can run loads ``random:small`` in bfloat16, shrinks the language model's linears as its format says, leaves
the vision tower alone and scores a mixed job close to bf16. fp8 needs compute capability >= 9 and is
refused below it, in one line.

The agreement bounds here are loose sanity bounds, not measurements: no GPU was lent while this was written.
The measured CPU bounds (``tests/integration/test_quantization.py``) and the device script's table
(``bench.quantization`` on random:2b / random:8b) are where the figures come from; tighten these from that
table once it exists.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bench.quantization import agreement
from rerankq.errors import ModelLoadError
from rerankq.models import quantization
from rerankq.models.loading import LoadOptions, load_model
from tests.integration.test_quantization import _job

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
# Linear bytes over bf16's: 8-bit formats about half (plus per-row scales), 4-bit ones about a quarter (plus
# per-64 scales and zero points / absmax).
RATIO = {"int8": 0.55, "int4": 0.32, "bnb-8bit": 0.55, "bnb-nf4": 0.32, "fp8": 0.55}


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def _linear_bytes(model: Any, vision: bool) -> int:
    return sum(quantization.weights_bytes(m) for n, m in model.backbone.named_modules()
               if isinstance(m, torch.nn.Linear) and quantization.is_vision(n) == vision)


@pytest.fixture(scope="module")
def full() -> Any:
    return load_model("random:small", LoadOptions(device="cuda"))


@pytest.mark.parametrize("mode", ["int8", "int4", "bnb-8bit", "bnb-nf4", "fp8"])
def test_a_mode_on_cuda(mode: str, full: Any) -> None:
    if mode == "fp8" and not _hopper():
        with pytest.raises(ModelLoadError, match=r"RERANKQ_QUANTIZATION\)='fp8' needs a CUDA GPU with compute"):
            load_model("random:small", LoadOptions(device="cuda", quantization=mode))
        return
    model = load_model("random:small", LoadOptions(device="cuda", quantization=mode))
    assert model.name.endswith(f"[{mode}]") and model.cache_identity() != full.cache_identity()
    assert _linear_bytes(model, vision=False) <= RATIO[mode] * _linear_bytes(full, vision=False)
    assert _linear_bytes(model, vision=True) == _linear_bytes(full, vision=True)
    a = agreement([full.forward(_job(full, docs=16))], [model.forward(_job(model, docs=16))])
    assert a["spearman_min"] >= 0.3 and a["top10_overlap"] >= 0.5 and 0 < a["max_abs_delta"] <= 0.3, a


def test_fp32_on_cuda_is_refused_for_the_bf16_kernels() -> None:
    with pytest.raises(ModelLoadError, match=r"RERANKQ_QUANTIZATION\)='int4' needs dtype bfloat16 on CUDA"):
        load_model("random:small", LoadOptions(device="cuda", dtype="float32", quantization="int4"))
