"""Qwen3-VL-Reranker: one implementation of the model contract (``rerankq.models.contract``)."""

# The version of "what score a given input gets" from this implementation. Bump it with every change that
# moves a score for some input (prompt, preprocessing, truncation, head): whatever caches scores keys on it.
#   1  first release
#   2  EXIF orientation no longer applied by default (the official qwen-vl-utils does not rotate); PIL images
#      and frame lists preprocessed exactly as references are
SCORING_VERSION = 2

# Qwen3-VL-Reranker's own defaults (the official script's); the settings of the same names override them.
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
DEFAULT_MAX_LENGTH = 10240
IMAGE_MIN_TOKENS, IMAGE_MAX_TOKENS, VIDEO_MAX_TOKENS, MAX_FRAMES = 4, 1800, 7680, 64
