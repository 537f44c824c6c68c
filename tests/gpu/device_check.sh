#!/usr/bin/env bash
# Shared-prefix scoring (issue 10), weight quantization (issue 20) and embedding throughput (issue 19) on a CUDA
# machine, in one go. Needs a
# venv with a CUDA torch and the quant extra (make setup does both):
#   make setup TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
#   tests/gpu/device_check.sh [OUT_DIR]            # optional: pip install flash-attn (>= 2.1) first
# 1. tests/gpu: fp32 shared == one pair per pass (<= 1e-5 logit); bf16 sdpa and flash-attention 2 varlen:
#    top-k agreement.
# 2. random:2b and random:8b in bf16: pairs/s and MFU (FLOP model, attention left out) for text pairs of 512
#    tokens, one-image pairs and an image query x 32 text documents: sharing on / off / one pair per pass.
# 3. Quantization against bf16 (below). 4. random:embed-2b and random:embed-8b in bf16: inputs/s batched vs one
#    input per pass, text and image, and embed-2b's jobs through the round engine without / cold / warm cache.
set -euo pipefail
out=${1:-${OUT:-/tmp/rerankq-device}}
mkdir -p "$out"
py=${PYTHON:-.venv/bin/python}
"$py" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.cuda.get_device_name())" \
  | tee "$out/device.txt"
"$py" -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tee "$out/pytest.txt"
for size in 2b 8b; do
  "$py" -m bench.scorer --model "random:$size" --device cuda --kinds text,image --pairs 64 \
    --text-tokens 512 2>&1 | tee "$out/pairs-$size.txt"
  "$py" -m bench.scorer --model "random:$size" --device cuda --jobs image-query:32,text-query:32 \
    --repeats 3 2>&1 | tee "$out/sharing-$size.txt"
done
# 3. Weight quantization (issue 20) against bf16 on the same random weights, one process per mode: weights
#    (bytes allocated), peak, pairs/s, Spearman per job, top-10 overlap, max and mean |Δ score|.
for size in 2b 8b; do
  "$py" -m bench.quantization --model "random:$size" --device cuda --modes int8,int4,fp8,bnb-8bit,bnb-nf4 \
    --jobs 4 --docs 16 --repeats 2 2>&1 | tee "$out/quant-$size.txt"
done
# 4. Embedding throughput (issue 19): inputs/s, one input per pass vs batched, and max |Δ| between the two.
for size in 2b 8b; do
  "$py" -m bench.embedding --model "random:embed-$size" --device cuda --dtype bfloat16 --kinds text,image \
    --inputs 64 --repeat 2 2>&1 | tee "$out/embed-$size.txt"
done
"$py" -m bench.embedding --engine --cache --model random:embed-2b --device cuda --dtype bfloat16 \
  --kinds text,image --jobs 4 --per-job 16 --repeat 1 2>&1 | tee "$out/embed-engine-2b.txt"
