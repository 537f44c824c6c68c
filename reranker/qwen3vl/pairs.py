"""What a prepared pair is: its token ids and vision inputs, and the prefix it may share with the other pairs of
its job (set by ``rerankq.models.qwen3vl.sharing``, computed by ``rerankq.models.qwen3vl.prefix``)."""

from __future__ import annotations

from dataclasses import dataclass

from rerankq.models.qwen3vl.prefix import PrefixKV
from rerankq.models.qwen3vl.vision import VisionInput


@dataclass
class PreparedPair:
    """A pair ready for the model: token ids (truncated) and its vision inputs in prompt order."""

    input_ids: list[int]
    vision: list[VisionInput]
    truncated: bool = False
    prefix: JobPrefix | None = None  # set when the job's pairs share a prefix computed once (sharing.py)

    @property
    def length(self) -> int:
        return len(self.input_ids)


@dataclass(eq=False)
class JobPrefix:
    """The prefix a job's pairs share: its tokens and vision inputs, the suffixes still to score against it
    and, from the first pass that needs it until its last suffix is scored, its keys and values."""

    ids: list[int]
    vision: list[VisionInput]
    pending: int
    served: int = 0
    kv: PrefixKV | None = None

    @property
    def length(self) -> int:
        return len(self.ids)
