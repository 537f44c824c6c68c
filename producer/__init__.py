"""producer: the client side of rerankq (SDK and CLI). Never imports torch, transformers or worker code."""

from producer.client import RerankClient

__all__ = ["RerankClient"]
