"""Model SPEC → ``Scorer``: a local directory, a Hugging Face id, ``s3://bucket/prefix/``, or ``random:2b|8b``.

Every checkpoint goes through ``Qwen3VLForConditionalGeneration.from_pretrained`` (tiny test checkpoints
included); ``random:*`` builds the exact released architecture with random weights directly on the target
device in the target dtype, so ``random:8b`` never materialises fp32 weights on the CPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from reranker.architectures import ARCHITECTURES, build_config
from reranker.model import Scorer
from rerankq.errors import ModelLoadError

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class LoadOptions:
    """How to load: device, dtype ("auto" = bf16 on CUDA, fp32 on CPU), attention, caches."""

    device: str = "cpu"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    cache_dir: str = "~/.cache/rerankq/models"
    s3_endpoint_url: str | None = None
    seed: int = 0


def resolve_dtype(device: str, dtype: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"dtype {dtype!r} is not one of auto, {', '.join(_DTYPES)}") from None


def resolve_attention(device: str, attn: str) -> str:
    if attn != "auto":
        return attn
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def _head_row(lm_head: torch.Tensor, tokenizer) -> torch.Tensor:  # type: ignore[no-untyped-def]
    vocab = tokenizer.get_vocab()
    return (lm_head[vocab["yes"]] - lm_head[vocab["no"]]).detach().clone()


def _from_pretrained(path: str, name: str, opts: LoadOptions) -> Scorer:
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    dtype = resolve_dtype(opts.device, opts.dtype)
    try:
        lm = Qwen3VLForConditionalGeneration.from_pretrained(
            path, dtype=dtype, attn_implementation=resolve_attention(opts.device, opts.attn_implementation))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a Qwen3-VL checkpoint from {path!r}: {exc}") from exc
    head = _head_row(lm.lm_head.weight.data, tokenizer)
    backbone = lm.model.to(opts.device)
    del lm  # drops the vocabulary head (untied models) — only the one row is kept
    return Scorer(backbone, head.to(opts.device), tokenizer, name)


def _random(size: str, opts: LoadOptions) -> Scorer:
    from transformers import Qwen3VLForConditionalGeneration

    from reranker.tokenizer import cached_qwen_tokenizer

    dtype = resolve_dtype(opts.device, opts.dtype)
    config = build_config(size)
    config._attn_implementation = resolve_attention(opts.device, opts.attn_implementation)
    torch.manual_seed(opts.seed)
    with torch.device(opts.device):  # weights are created on the device, in ``dtype``
        lm = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    tokenizer = cached_qwen_tokenizer()
    head = _head_row(lm.lm_head.weight.data, tokenizer)
    backbone = lm.model
    del lm
    return Scorer(backbone, head, tokenizer, f"random:{size} ({ARCHITECTURES[size]['name']} architecture)")


def download_s3_checkpoint(uri: str, cache_dir: str, endpoint_url: str | None) -> Path:
    """Download ``s3://bucket/prefix/`` once into the cache; later calls return the cached directory."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    key = hashlib.sha256(f"{endpoint_url}|{bucket}|{prefix}".encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / f"{bucket}-{key}"
    if (target / ".complete").exists():
        return target
    staging = target.with_name(target.name + f".part{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    client = boto3.client("s3", endpoint_url=endpoint_url)
    count = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix):]
                if not rel or rel.endswith("/"):
                    continue
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(dest))
                count += 1
    except (BotoCoreError, ClientError) as exc:
        raise ModelLoadError(f"cannot download checkpoint {uri}: {exc}") from exc
    if count == 0 or not (staging / "config.json").exists():
        raise ModelLoadError(f"{uri} holds no checkpoint (no config.json among {count} objects)")
    (staging / ".complete").write_text(uri)
    try:
        staging.rename(target)
    except OSError:  # another worker finished first; use theirs
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("downloaded %d files of %s into %s", count, uri, target)
    return target


def load_scorer(spec: str, opts: LoadOptions | None = None) -> Scorer:
    """Resolve a model SPEC (see module doc) and load it."""
    opts = opts or LoadOptions()
    if spec.startswith("random:"):
        size = spec.split(":", 1)[1].lower()
        if size not in ARCHITECTURES:
            raise ModelLoadError(f"model SPEC {spec!r}: random: takes {', '.join(ARCHITECTURES)}")
        return _random(size, opts)
    if spec.startswith("s3://"):
        path = download_s3_checkpoint(spec, opts.cache_dir, opts.s3_endpoint_url)
        return _from_pretrained(str(path), spec, opts)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelLoadError(f"model SPEC {spec!r}: directory has no config.json")
        return _from_pretrained(str(local), local.name, opts)
    if spec.count("/") == 1 and not spec.startswith(("/", ".")):
        return _from_pretrained(spec, spec.split("/")[1], opts)  # a Hugging Face id
    raise ModelLoadError(f"model SPEC {spec!r} is not a directory, a Hugging Face id (org/name), "
                         "s3://bucket/prefix/, random:2b or random:8b")
