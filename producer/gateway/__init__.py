"""The HTTP gateway: Cohere- and vLLM-compatible rerank, async jobs over HTTP, media upload and a web console,
in front of the same Redis as the SDK (``rerankq gateway``). Needs the ``gateway`` extra; no torch."""
