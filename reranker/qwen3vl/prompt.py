"""The reranker's prompt, exactly as the official Qwen3-VL-Reranker renders it.

``render_prompt`` gives the chat-template output *before* vision tokens are expanded; ``expand_vision``
(in ``rerankq.models.qwen3vl.preparing``) then replaces each pad with the processor's token run.
"""

from __future__ import annotations

from typing import Any

from rerankq.media.sides import Side

SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
EMPTY_SIDE = "NULL"


Piece = tuple[str, bool]  # (text, is a special token of the template)
_SPECIAL_PLACEHOLDER = {"image": ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
                        "video": ("<|vision_start|>", "<|video_pad|>", "<|vision_end|>")}


def side_pieces(prefix: str, texts: list[str], kinds: list[str]) -> list[Piece]:
    """One side: its prefix, a placeholder per vision item (in the order given), then its texts."""
    if not texts and not kinds:
        return [(prefix + EMPTY_SIDE, False)]
    out: list[Piece] = [(prefix, False)]
    for kind in kinds:
        out += [(token, True) for token in _SPECIAL_PLACEHOLDER["video" if kind == "video" else "image"]]
    return out + [(text, False) for text in texts]


def prompt_pieces(instruction: str, query: tuple[list[str], list[str]],
                  document: tuple[list[str], list[str]]) -> list[Piece]:
    """The prompt of one pair as pieces, the template's special tokens apart from every text, so that text a
    user wrote is never read as a control token (``rerankq.models.qwen3vl.preparing`` tokenizes it as text)."""
    return [
        ("<|im_start|>", True), ("system\n" + SYSTEM_PROMPT, False), ("<|im_end|>", True), ("\n", False),
        ("<|im_start|>", True), ("user\n<Instruct>: " + instruction, False),
        *side_pieces("<Query>:", *query), *side_pieces("\n<Document>:", *document),
        ("<|im_end|>", True), ("\n", False), ("<|im_start|>", True), ("assistant\n", False),
    ]


def render_side(prefix: str, texts: list[str], kinds: list[str]) -> str:
    """One side as text (see ``side_pieces``)."""
    return "".join(text for text, _ in side_pieces(prefix, texts, kinds))


def render_prompt(instruction: str, query: Side, document: Side) -> str:
    """The full prompt of one pair, vision pads not yet expanded."""
    return render_parts(instruction, (query.texts, query.kinds), (document.texts, document.kinds))


def render_parts(instruction: str, query: tuple[list[str], list[str]], document: tuple[list[str], list[str]]) -> str:
    """``render_prompt`` from (texts, vision kinds) of each side."""
    return "".join(text for text, _ in prompt_pieces(instruction, query, document))


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
