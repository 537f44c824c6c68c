"""Model SPEC → a loaded ``rerankq.models.contract.RerankModel``.

A SPEC is a local directory, a Hugging Face id (``org/name``), ``s3://bucket/prefix/`` (downloaded once into
a cache), ``random:SIZE`` (a released architecture with random weights, for benchmarks) or ``fake:MODE``
(the deterministic fake of ``rerankq.models.fake``). A checkpoint's implementation is picked from the
``architectures`` of its ``config.json`` (the head it was saved with), never from ``model_type``: one
``model_type`` covers checkpoints with different heads (``xlm-roberta`` is bge-reranker-v2-m3, a
sequence-classification head, and bge-m3, a bare encoder for embeddings), and loading one as the other would
score with a randomly initialised head, silently. A new model family is one entry in ``IMPLEMENTATIONS`` and
a folder of its own; ``REFUSED`` names architectures known not to be served, with the reason. Where one
architecture is saved by both a reranker and an embedding model (Qwen3-VL's), ``EMBEDDINGS`` tells them apart by
the checkpoint's files, and loads the embedding model (``capabilities.task`` ``embed``).

Weight quantization (``opts.quantization``) is checked here, before any weight is read, and applied by each
implementation's loader through ``rerankq.models.quantization.quantize`` after loading.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rerankq import s3
from rerankq.errors import ModelLoadError
from rerankq.models import quantization
from rerankq.models.contract import RerankModel
from rerankq.models.options import LoadOptions, resolve_dtype

logger = logging.getLogger(__name__)

__all__ = ["IMPLEMENTATIONS", "TINY_FAMILIES", "LoadOptions", "load_model", "write_tiny_model"]

# config.json ``architectures`` → "module:function(path, name, opts)" that loads it. Imported only when used.
IMPLEMENTATIONS = {
    "Qwen3VLForConditionalGeneration": "rerankq.models.qwen3vl.loading:from_pretrained",
    "XLMRobertaForSequenceClassification": "rerankq.models.xlmr.loading:from_pretrained",
}
# Architectures whose checkpoints may also be embedding models, told apart by their files: "module:check(path)",
# and the "module:function(path, name, opts)" that loads such a checkpoint (``capabilities.task`` ``embed``).
EMBEDDINGS = {
    "Qwen3VLForConditionalGeneration": ("rerankq.models.qwen3vl_embed.serving:is_embedding_checkpoint",
                                        "rerankq.models.qwen3vl_embed.serving:from_pretrained"),
}
# Architectures that are known, and known not to be served: why, for the error.
REFUSED = {
    "XLMRobertaModel": "a bare XLM-RoBERTa encoder (an embedding checkpoint such as bge-m3) has no relevance head; "
                       "as a reranker it would score with a randomly initialised one",
}
# ``rerankq tiny-model --family NAME`` → "module:function(out_dir, seed)" that writes a tiny random checkpoint.
TINY_FAMILIES = {
    "qwen3vl-reranker": "rerankq.models.qwen3vl.tiny:write_tiny_model",
    "xlmr-reranker": "rerankq.models.xlmr.tiny:write_tiny_model",
    "embedding": "rerankq.models.qwen3vl_embed.tiny:write_tiny_embedding_model",
}
RANDOM = "rerankq.models.qwen3vl.loading:random_weights"  # random:SIZE builds Qwen3-VL-Reranker architectures
RANDOM_EMBED = ("random:embed-", "rerankq.models.qwen3vl_embed.serving:random_weights")  # Qwen3-VL-Embedding


def _entry(target: str) -> Callable[..., RerankModel[Any]]:
    module, _, function = target.partition(":")
    loader: Callable[..., RerankModel[Any]] = getattr(importlib.import_module(module), function)
    return loader


def _architectures(path: str) -> list[str]:
    """The ``architectures`` of a checkpoint (a directory, or a Hugging Face id read through transformers)."""
    config = Path(path) / "config.json"
    if config.exists():
        found = json.loads(config.read_text()).get("architectures")
    else:
        from transformers import AutoConfig

        try:
            found = AutoConfig.from_pretrained(path).architectures
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the config of {path!r}: {exc}") from exc
    return [str(a) for a in found or []]


def pick_implementation(path: str, architectures: list[str]) -> str:
    """The loader target for a checkpoint with these ``architectures``; refuses, naming them, one it cannot serve."""
    for arch in architectures:
        if arch in EMBEDDINGS:
            check, target = EMBEDDINGS[arch]
            module, _, function = check.partition(":")
            if getattr(importlib.import_module(module), function)(path):
                return target
    for arch in architectures:
        if arch in IMPLEMENTATIONS:
            return IMPLEMENTATIONS[arch]
    for arch in architectures:
        if arch in REFUSED:
            raise ModelLoadError(f"{path!r} is a {arch} checkpoint: {REFUSED[arch]}; rerankq serves "
                                 f"{', '.join(IMPLEMENTATIONS)} (rerankq.models.loading.IMPLEMENTATIONS)")
    shown = ", ".join(architectures) if architectures else "no architectures in its config.json"
    raise ModelLoadError(f"{path!r} is a checkpoint of {shown}; rerankq serves "
                         f"{', '.join(IMPLEMENTATIONS)} (rerankq.models.loading.IMPLEMENTATIONS)")


def _checkpoint(path: str, name: str, opts: LoadOptions) -> RerankModel[Any]:
    return _entry(pick_implementation(path, _architectures(path)))(path, name, opts)


def write_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight checkpoint of ``family`` (``TINY_FAMILIES``), written offline into ``out_dir``."""
    if family not in TINY_FAMILIES:
        raise ModelLoadError(f"tiny-model family {family!r} is not one of {', '.join(TINY_FAMILIES)}")
    module, _, function = TINY_FAMILIES[family].partition(":")
    out: Path = getattr(importlib.import_module(module), function)(out_dir, seed=seed)
    return out


def download_s3_checkpoint(uri: str, cache_dir: str, endpoint_url: str | None) -> Path:
    """Download ``s3://bucket/prefix/`` once into the cache; later calls return the cached directory."""
    bucket, prefix = s3.split_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    key = hashlib.sha256(f"{endpoint_url}|{bucket}|{prefix}".encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / f"{bucket}-{key}"
    if (target / ".complete").exists():
        return target
    staging = target.with_name(target.name + f".part{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    client = s3.make_client(endpoint_url, attempts=3)
    count = 0
    try:
        with s3.translate_errors(uri):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix):]
                    if not rel or rel.endswith("/"):
                        continue
                    dest = staging / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, obj["Key"], str(dest))
                    count += 1
    except (s3.StorageError, s3.TransientStorageError) as exc:
        raise ModelLoadError(f"cannot download checkpoint {exc}") from exc
    if count == 0 or not (staging / "config.json").exists():
        raise ModelLoadError(f"{uri} holds no checkpoint (no config.json among {count} objects)")
    (staging / ".complete").write_text(uri)
    try:
        staging.rename(target)
    except OSError:  # another worker finished first; use theirs
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("downloaded %d files of %s into %s", count, uri, target)
    return target


def check_device(device: str) -> None:
    """Refuse a device this machine cannot use, with what to do about it (before any weight is loaded)."""
    if device == "cpu":
        return
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ModelLoadError(f"device {device!r} is not one of cpu, cuda, cuda:N")
    import torch

    if torch.version.cuda is None:
        raise ModelLoadError(f"device {device!r}: this torch ({torch.__version__}) is built without CUDA; install "
                             "a CUDA build of torch (make setup TORCH_SPEC=...) or use --device cpu")
    count = torch.cuda.device_count()
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise ModelLoadError(f"device {device!r}: this machine has {count} usable CUDA device(s)"
                             + (f" (cuda:0 to cuda:{count - 1})" if count else "; check the driver (nvidia-smi)"))


def load_model(spec: str, opts: LoadOptions | None = None) -> RerankModel[Any]:
    """Resolve a model SPEC (see module doc) and load it."""
    opts = opts or LoadOptions()
    if spec.startswith("fake:"):
        if opts.quantization != "none":
            raise ModelLoadError(f"{quantization.SETTING}={opts.quantization!r}: {spec} has no weights to quantize")
        from rerankq.models.fake import load_fake

        return load_fake(spec, opts)
    check_device(opts.device)
    quantization.check(opts.quantization, opts.device, resolve_dtype(opts.device, opts.dtype))
    if spec.startswith(RANDOM_EMBED[0]):
        return _entry(RANDOM_EMBED[1])(spec.removeprefix(RANDOM_EMBED[0]).lower(), opts)
    if spec.startswith("random:"):
        return _entry(RANDOM)(spec.split(":", 1)[1].lower(), opts)
    if spec.startswith("s3://"):
        return _checkpoint(str(download_s3_checkpoint(spec, opts.cache_dir, opts.s3_endpoint_url)), spec, opts)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelLoadError(f"model SPEC {spec!r}: directory has no config.json")
        return _checkpoint(str(local), local.name, opts)
    if spec.count("/") == 1 and not spec.startswith(("/", ".")):
        return _checkpoint(spec, spec.split("/")[1], opts)  # a Hugging Face id
    raise ModelLoadError(f"model SPEC {spec!r} is not a directory, a Hugging Face id (org/name), "
                         "s3://bucket/prefix/, random:2b, random:8b or fake:MODE")
