"""Qwen3-VL-Embedding: the model core of embedding jobs (prompt, preparing, pooling, loading, a tiny checkpoint).

``Embedder.embed(inputs, instruction, dimensions)`` turns resolved inputs (texts and the reranker's vision
inputs, ``rerankq.models.qwen3vl.vision``) into L2-normalised float32 vectors, many inputs per forward pass.
"""

# Bump when the vectors of the same weights and inputs change (prompt, pooling, preprocessing).
EMBEDDING_VERSION = 1
