"""Text cross-encoders (bge-reranker-v2-m3, ``XLMRobertaForSequenceClassification``): one implementation of the
model contract (``rerankq.models.contract``). score = sigmoid(logit) of the sequence-classification head over
``tokenizer(query, document, truncation=True, max_length=512)``, as the official FlagEmbedding usage."""

# The version of "what score a given input gets" from this implementation (see ``rerankq.models.qwen3vl``).
SCORING_VERSION = 1
DEFAULT_MAX_LENGTH = 512  # bge-reranker-v2-m3's recommended pair length
