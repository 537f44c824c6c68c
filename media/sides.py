"""What the media layer takes and gives: sides with references in, sides with decoded inputs out.

- ``Side``: the query or one document as a job gives it (texts, image references, videos).
- ``ResolvedSide``: the same side once its media are fetched, decoded and turned into model inputs by the
  model's ``Preprocessor`` (see ``rerankq.media.resolver``); the media layer never looks inside those inputs.
- ``VisionBudget``: the per-request limits that change what a medium becomes (token bounds, frame sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class VisionError(ValueError):
    """An image or video cannot be decoded or brought within the model's limits (the message says which)."""


@dataclass
class Side:
    """One side of a pair (the query or a document): its texts, images and videos.

    ``images`` holds one entry per image (a reference string or a decoded image); ``videos`` one entry per
    video (a reference to a video file, or a list of frames). Order inside a side is fixed by the model:
    videos, then images, then texts.
    """

    texts: list[str] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    videos: list[Any] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.texts or self.images or self.videos)

    @property
    def kinds(self) -> list[str]:
        """The vision items in prompt order: videos, then images."""
        return ["video"] * len(self.videos) + ["image"] * len(self.images)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str | None) -> Side:
        """Build from the job format: ``{"text": str|[str], "image": ref|[ref], "video": ref|[frame refs]}``,
        or a plain string, the text shorthand (``"query": "a cat"``, as Cohere and vLLM callers write it)."""
        if isinstance(data, str):
            return cls(texts=[data])
        data = data or {}
        text, image, video = data.get("text"), data.get("image"), data.get("video")
        texts = [] if text is None else [text] if isinstance(text, str) else list(text)
        images = [] if image is None else list(image) if isinstance(image, list | tuple) else [image]
        # A video is one reference (a file) or one list of frames; a list of lists is several videos.
        if video is None:
            videos = []
        elif isinstance(video, list | tuple) and video and isinstance(video[0], list | tuple):
            videos = [list(v) for v in video]
        else:
            videos = [list(video) if isinstance(video, list | tuple) else video]
        return cls(texts=texts, images=images, videos=videos)


@dataclass
class ResolvedSide:
    """A side whose media are decoded: texts, and the model's vision inputs in prompt order (videos, then
    images). The inputs are whatever the model's preprocessor built; they are shared, never modified.
    ``media`` says what each input was decoded from (``rerankq.media.identity``, tagged with its kind; None when
    unknown), in the same order: what a score cache keys on. Empty when nobody asked."""

    texts: list[str] = field(default_factory=list)
    vision: list[Any] = field(default_factory=list)
    media: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class VisionBudget:
    """Per-request vision limits. A token bound left None is the model's own default: its preprocessor applies it
    (``rerankq.models.contract.RerankModel.capabilities`` declares it)."""

    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    video_max_tokens: int | None = None
    fps: float = 1.0
    max_frames: int = 64
