"""Command-line options shared by the commands that load a model (``worker``, ``bench``, ``demo``)."""

from __future__ import annotations

import argparse

from rerankq.settings import QUANTIZATION_MODES


def add_quantization_argument(parser: argparse.ArgumentParser) -> None:
    """``--quantization MODE`` (default: RERANKQ_QUANTIZATION, else none)."""
    parser.add_argument("--quantization", default=None, choices=QUANTIZATION_MODES,
                        help="weight quantization of the model's linear layers (default: RERANKQ_QUANTIZATION, "
                        "else none): none, int8 and int4 (torchao), bnb-8bit and bnb-nf4 (bitsandbytes), fp8 "
                        "(CUDA compute capability >= 9); see docs/CONFIG.md")
