"""Weight quantization of a loaded model, for every model family: ``LoadOptions.quantization``.

Modes (``RERANKQ_QUANTIZATION``):

- ``none``: the weights as the checkpoint has them. A pre-quantized checkpoint (a ``quantization_config`` in
  its ``config.json``: FP8 or NVFP4 compressed-tensors, torchao, bitsandbytes) loads as it comes, through
  transformers, and is labelled with its method (``checkpoint_label``).
- ``int8`` / ``int4``: torchao weight-only (the configs transformers' ``TorchAoConfig`` wraps): int8 per row;
  int4 in groups of 64, packed for tinygemm on CUDA (bfloat16) and held one value per byte on the CPU
  (torchao has no packed int4 CPU layout for this torch).
- ``bnb-8bit`` / ``bnb-nf4``: bitsandbytes ``Linear8bitLt`` (LLM.int8, threshold 6) / ``Linear4bit`` NF4;
  recent releases run on the CPU too.
- ``fp8``: torchao float8 weights and dynamic float8 activations, per row: CUDA with compute capability >= 9,
  bfloat16.

Quantization is applied after loading (``quantize``): each ``nn.Linear`` outside the vision tower is moved to
the device and quantized one at a time, so a checkpoint (loaded on the CPU) never sits on the device in full
precision; random weights, drawn on the device, are quantized there in place. Both share the one path, and
bitsandbytes needs no accelerate. The vision tower,
the embeddings, norms and the scoring head stay in full precision unless ``quantize_vision`` (the vision
tower's linears then too). Which submodules are "vision" is a rule on names, the same for every family
(``VISION_PARTS``): a family names its vision tower ``visual``, ``vision_*`` or ``*_projector`` as
transformers' multimodal models do.

``check`` refuses a mode this machine cannot run before any weight is read, in one line naming the setting
and what it needs. ``weights_bytes`` measures what the weights really occupy.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from rerankq.errors import ModelLoadError
from rerankq.settings import QUANTIZATION_MODES

MODES = QUANTIZATION_MODES
TORCHAO_MODES = ("int8", "int4", "fp8")
BNB_MODES = ("bnb-8bit", "bnb-nf4")
SETTING = "quantization (RERANKQ_QUANTIZATION)"
INT4_GROUP = 64
# A submodule is part of the vision tower when a part of its qualified name is one of these, or starts "vision".
VISION_PARTS = ("visual", "multi_modal_projector", "mm_projector", "vision")
INSTALL = "pip install 'rerankq[quant]'"


def _fail(mode: str, needs: str) -> ModelLoadError:
    return ModelLoadError(f"{SETTING}={mode!r} needs {needs}")


# Import-time noise of torchao on a CPU build: its optional CUDA kernels fail to load, and torch deprecates the
# way it registers its enums. Neither is an error; both would land on every worker's and command's stderr.
_NOISY = ("torchao", "torch.utils._pytree")


def _import_torchao(mode: str) -> Any:
    loggers = [logging.getLogger(name) for name in _NOISY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao.quantization as ao

        return ao
    except ImportError as exc:
        raise _fail(mode, f"torchao ({INSTALL}): {exc}") from None
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def check(mode: str, device: str, dtype: torch.dtype) -> None:
    """Refuse, before loading, a mode that is unknown or that this machine (device, libraries) cannot run."""
    if mode not in MODES:
        raise ModelLoadError(f"{SETTING}={mode!r} is not one of {', '.join(MODES)}")
    if mode == "none":
        return
    cuda = device.startswith("cuda")
    if mode == "fp8":
        if not cuda:
            raise _fail(mode, f"a CUDA GPU with compute capability >= 9.0 (H100 or newer); device is {device!r}")
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        if major < 9:
            raise _fail(mode, f"a CUDA GPU with compute capability >= 9.0; {device} has {major}.{minor} "
                        "(use int8, int4, bnb-8bit or bnb-nf4)")
    if mode in ("int4", "fp8") and cuda and dtype != torch.bfloat16:  # tinygemm; row-wise scaled float8 matmuls
        raise _fail(mode, f"dtype bfloat16 on CUDA (RERANKQ_SCORING__DTYPE=auto or bfloat16), not {dtype}")
    if mode in TORCHAO_MODES:
        _import_torchao(mode)
    else:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise _fail(mode, f"bitsandbytes ({INSTALL}): {exc}") from None


def label(mode: str, quantize_vision: bool) -> str:
    """How results, metrics and the cache identity name the quantization: ``int8``, ``int8+vision``."""
    return mode + ("+vision" if quantize_vision and mode != "none" else "")


def is_vision(name: str) -> bool:
    """Whether the submodule of qualified ``name`` belongs to a vision tower (``VISION_PARTS``)."""
    return any(part in VISION_PARTS or part.startswith("vision") for part in name.split("."))


def _targets(module: torch.nn.Module, quantize_vision: bool) -> list[str]:
    return [name for name, sub in module.named_modules()
            if isinstance(sub, torch.nn.Linear) and (quantize_vision or not is_vision(name))]


def _torchao_config(mode: str, device: str) -> Any:
    ao = _import_torchao(mode)
    if mode == "int8":
        return ao.Int8WeightOnlyConfig(set_inductor_config=False)
    if mode == "fp8":
        return ao.Float8DynamicActivationFloat8WeightConfig(granularity=ao.PerRow(), set_inductor_config=False)
    if device.startswith("cuda"):
        return ao.Int4WeightOnlyConfig(group_size=INT4_GROUP, int4_packing_format="tile_packed_to_4d",
                                       set_inductor_config=False)
    from torchao.quantization.granularity import PerGroup

    int4 = getattr(torch, "int4")  # noqa: B009 (torch's stubs lack its sub-byte dtypes)
    return ao.IntxWeightOnlyConfig(weight_dtype=int4, granularity=PerGroup(INT4_GROUP))


def _bnb_linear(linear: torch.nn.Linear, mode: str, device: str) -> torch.nn.Module:
    import bitsandbytes as bnb

    weight = linear.weight.data
    new: torch.nn.Module
    if mode == "bnb-8bit":
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  has_fp16_weights=False, threshold=6.0, device="meta")
        new.weight = bnb.nn.Int8Params(weight.cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                compute_dtype=weight.dtype, quant_type="nf4", device="meta")
        new.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type="nf4")
    if linear.bias is not None:
        new.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return new.to(device)  # quantizes the weight on its way


def quantize(module: torch.nn.Module, mode: str, device: str, quantize_vision: bool = False) -> str:
    """Quantize ``module``'s linears (``check`` passed) one at a time onto ``device``, move the rest there;
    returns the ``label``. With ``none``, only moves it."""
    if mode == "none":
        module.to(device)
        return "none"
    targets = set(_targets(module, quantize_vision))
    if not targets:
        raise ModelLoadError(f"{SETTING}={mode!r}: the model has no linear layer to quantize")
    if mode in TORCHAO_MODES:
        ao = _import_torchao(mode)
        ao.quantize_(module, _torchao_config(mode, device), filter_fn=lambda _m, fqn: fqn in targets,
                     device=device)
    else:  # LLM.int8 multiplies in float16 whatever the model's dtype: said once here, not on every pass
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        for name in sorted(targets):
            parent_name, _, child = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            setattr(parent, child, _bnb_linear(getattr(parent, child), mode, device))
    module.to(device)
    return label(mode, quantize_vision)


def checkpoint_label(config: Any) -> str:
    """The method of a pre-quantized checkpoint (its ``quantization_config``), or ``none``."""
    q = getattr(config, "quantization_config", None)
    if q is None:
        return "none"
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    method = getattr(method, "value", method)
    fmt = q.get("format") if isinstance(q, dict) else getattr(q, "format", None)
    return f"checkpoint:{method or 'unknown'}" + (f"/{fmt}" if fmt else "")


def _inner(tensor: Any) -> Iterator[torch.Tensor]:
    """The plain tensors that hold a (possibly subclassed, possibly quantized) tensor's data."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):  # torchao's quantized tensors: their inner tensors
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            yield from _inner(getattr(tensor, name))
        return
    if isinstance(tensor, torch.Tensor):
        yield tensor
    for attr in ("SCB", "CB"):  # bitsandbytes int8 statistics
        extra = getattr(tensor, attr, None)
        if isinstance(extra, torch.Tensor):
            yield extra
    state = getattr(tensor, "quant_state", None)  # bitsandbytes 4-bit: absmax, code, nested state
    while state is not None:
        yield from (v for v in vars(state).values() if isinstance(v, torch.Tensor))
        state = getattr(state, "state2", None)


def weights_bytes(module: torch.nn.Module, *extra: torch.Tensor) -> int:
    """Bytes the parameters and buffers (and ``extra`` tensors) really occupy: each storage counted once,
    quantized tensors by the tensors inside them."""
    seen: dict[tuple[str, int], int] = {}
    for tensor in [*module.parameters(), *module.buffers(), *extra]:
        for inner in _inner(tensor):
            storage = inner.untyped_storage()
            seen[(inner.device.type, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())
