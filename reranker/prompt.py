"""The reranker's prompt, exactly as the official Qwen3-VL-Reranker renders it.

``render_prompt`` gives the chat-template output *before* vision tokens are expanded; ``expand_vision``
(in ``reranker.pipeline``) then replaces each pad with the processor's token run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The version of "what score a given input gets" from this implementation. Bump it with every change that
# moves a score for some input (prompt, preprocessing, truncation, head): whatever caches scores keys on it.
#   1  first release
#   2  EXIF orientation no longer applied by default (the official qwen-vl-utils does not rotate); PIL images
#      and frame lists preprocessed exactly as references are
SCORING_VERSION = 2

SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
EMPTY_SIDE = "NULL"


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


    @property
    def kinds(self) -> list[str]:
        """The vision items in prompt order: videos, then images."""
        return ["video"] * len(self.videos) + ["image"] * len(self.images)


def render_side(prefix: str, texts: list[str], kinds: list[str]) -> str:
    """One side: its prefix, a placeholder per vision item (in the order given), then its texts."""
    if not texts and not kinds:
        return prefix + EMPTY_SIDE
    pads = "".join(VIDEO_PLACEHOLDER if k == "video" else IMAGE_PLACEHOLDER for k in kinds)
    return prefix + pads + "".join(texts)


def render_prompt(instruction: str, query: Side, document: Side) -> str:
    """The full prompt of one pair, vision pads not yet expanded."""
    return render_parts(instruction, (query.texts, query.kinds), (document.texts, document.kinds))


def render_parts(instruction: str, query: tuple[list[str], list[str]], document: tuple[list[str], list[str]]) -> str:
    """``render_prompt`` from (texts, vision kinds) of each side."""
    user = "<Instruct>: " + instruction + render_side("<Query>:", *query) + render_side("\n<Document>:", *document)
    return (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def chat_messages(instruction: str, query: Side, document: Side) -> list[dict[str, Any]]:
    """The same pair as chat messages, the shape the official script hands to ``apply_chat_template``."""

    def content(prefix: str, side: Side) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = [{"type": "text", "text": prefix}]
        if side.is_empty:
            return [*items, {"type": "text", "text": EMPTY_SIDE}]
        items += [{"type": "video", "video": v} for v in side.videos]
        items += [{"type": "image", "image": i} for i in side.images]
        return items + [{"type": "text", "text": t} for t in side.texts]

    user = [{"type": "text", "text": "<Instruct>: " + instruction}]
    user += content("<Query>:", query) + content("\n<Document>:", document)
    return [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": user},
    ]


# A Qwen3-VL style chat template (ChatML with vision placeholders), shipped with tiny checkpoints so that
# ``processor.apply_chat_template`` renders the same string as ``render_prompt``.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item['type'] == 'video' or 'video' in item -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item -%}{{ item['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)
