"""The score cache's key: a digest of everything that can move a pair's score, and of nothing else.

A key is sha256 (160 bits kept) over a format version and

- the model's ``cache_identity()``: weights (checkpoint content hash, or ``random:`` SPEC and seed), dtype,
  attention implementation, device type, scoring version, ``max_length``;
- the job's preprocessing: its instruction (the deployment's default when it gives none),
  ``max_tokens_per_doc``, and, for a pair that holds an image or a video, the vision budget (fps, max_frames,
  image token bounds, video token budget) and ``media.exif_transpose``: a text-only pair keeps its key when
  only video sampling changes;
- the query's and the document's content: texts, and media by what they are (``rerankq.media.identity``, in
  prompt order), never by where they are.

The same content gives the same key whether it is computed before a fetch (``from_side``: texts, S3 ETags by
HEAD, file digests) or after it (``from_resolved``: identities of the bytes actually decoded).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from rerankq.media.identity import side_media
from rerankq.media.sides import ResolvedSide, Side, VisionBudget

KEY_VERSION = 1  # bump when what goes into a key changes


@dataclass(frozen=True)
class Content:
    """One side as the key sees it: its texts and its media identities, in prompt order."""

    texts: tuple[str, ...]
    media: tuple[str, ...]

    def encoded(self) -> str:
        return json.dumps([list(self.texts), list(self.media)], separators=(",", ":"))


NO_QUERY = Content((), ())  # an embedding job's: its inputs are keyed alone (the model's identity tells the task)


def from_side(side: Side, budget: VisionBudget, known: Mapping[str, str | None]) -> Content | None:
    """A side before its media are fetched; None when one of them cannot be told (https bytes, a failed HEAD)."""
    media = side_media(side, budget, known)
    return None if media is None else Content(tuple(side.texts), tuple(media))


def from_resolved(side: ResolvedSide) -> Content | None:
    """A side after its media were fetched and decoded; None when one of them has no identity."""
    if len(side.media) != len(side.vision) or any(m is None for m in side.media):
        return None
    return Content(tuple(side.texts), tuple(m for m in side.media if m is not None))


@dataclass(frozen=True)
class JobContext:
    """What every pair of one job shares: the model, the instruction and the preprocessing settings."""

    model: str
    instruction: str
    max_tokens_per_doc: int | None
    budget: VisionBudget
    exif_transpose: bool

    def params(self, vision: bool) -> str:
        vision_params = {**asdict(self.budget), "exif_transpose": self.exif_transpose} if vision else None
        return json.dumps([KEY_VERSION, self.model, self.instruction, self.max_tokens_per_doc, vision_params],
                          sort_keys=True, separators=(",", ":"))


@dataclass
class JobKeys:
    """The keys of one job's pairs: the job's part and the query are digested once, each document once."""

    context: JobContext
    query: Content
    _bases: dict[bool, bytes] = field(default_factory=dict)

    def key(self, document: Content | None) -> str | None:
        if document is None:
            return None
        vision = bool(self.query.media or document.media)
        if vision not in self._bases:
            head = hashlib.sha256(self.context.params(vision).encode())
            head.update(b"\0" + self.query.encoded().encode())
            self._bases[vision] = head.digest()
        return hashlib.sha256(self._bases[vision] + b"\0" + document.encoded().encode()).hexdigest()[:40]
