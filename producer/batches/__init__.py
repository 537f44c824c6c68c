"""JSONL batches: a file of rerank jobs in S3, a file of results back (``rerankq batch``)."""
