"""producer: the client side of rerankq (SDK and CLI). Never imports torch, transformers or worker code."""

from rerankq.callbacks import verify_signature
from rerankq.client.client import RerankClient
from rerankq.errors import SignatureError

__all__ = ["RerankClient", "SignatureError", "verify_signature"]
