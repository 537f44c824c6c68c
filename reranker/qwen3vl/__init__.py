"""Qwen3-VL-Reranker: one implementation of the model contract (``rerankq.models.contract``)."""

# The version of "what score a given input gets" from this implementation. Bump it with every change that
# moves a score for some input (prompt, preprocessing, truncation, head): whatever caches scores keys on it.
#   1  first release
#   2  EXIF orientation no longer applied by default (the official qwen-vl-utils does not rotate); PIL images
#      and frame lists preprocessed exactly as references are
SCORING_VERSION = 2
