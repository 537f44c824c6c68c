"""The rendered prompt equals the official Qwen3-VL-Reranker script's string byte for byte, for every kind of
side (``expected`` spells that string out)."""

from __future__ import annotations

import jinja2

from rerankq.models.qwen3vl.prompt import CHAT_TEMPLATE, Side, chat_messages, render_prompt

SYSTEM = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
          'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n')
DEFAULT = "Given a search query, retrieve relevant candidates that answer the query."
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


def expected(instruction: str, query: str, document: str) -> str:
    return (SYSTEM + f"<|im_start|>user\n<Instruct>: {instruction}<Query>:{query}\n<Document>:{document}"
            "<|im_end|>\n<|im_start|>assistant\n")


def test_text_pair_matches_the_official_prompt() -> None:
    prompt = render_prompt(DEFAULT, Side(texts=["a blue backpack"]), Side(texts=["nylon, bottle pocket"]))
    assert prompt == expected(DEFAULT, "a blue backpack", "nylon, bottle pocket")


def test_image_and_video_order_is_videos_images_texts() -> None:
    doc = Side.from_dict({"text": "caption", "image": ["s3://m/a.jpg", "s3://m/b.jpg"], "video": "s3://m/v.mp4"})
    prompt = render_prompt("Find it.", Side.from_dict({"image": "s3://m/q.jpg"}), doc)
    assert prompt == expected("Find it.", IMG, VID + IMG + IMG + "caption")


def test_frame_list_is_one_video() -> None:
    side = Side.from_dict({"video": ["s3://m/f1.jpg", "s3://m/f2.jpg", "s3://m/f3.jpg"]})
    assert len(side.videos) == 1 and len(side.videos[0]) == 3
    assert render_prompt(DEFAULT, side, Side(texts=["x"])) == expected(DEFAULT, VID, "x")


def test_empty_side_is_null() -> None:
    assert render_prompt(DEFAULT, Side(), Side(texts=["doc"])) == expected(DEFAULT, "NULL", "doc")
    assert render_prompt(DEFAULT, Side(texts=["q"]), Side.from_dict({})) == expected(DEFAULT, "q", "NULL")


def test_text_list_is_concatenated_without_separator() -> None:
    assert render_prompt(DEFAULT, Side(texts=["a", "b"]), Side(texts=["c"])) == expected(DEFAULT, "ab", "c")


def test_chat_template_renders_the_same_string() -> None:
    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    for query, doc in [
        (Side(texts=["q"]), Side(texts=["d"])),
        (Side.from_dict({"image": "a.png", "text": "q"}), Side.from_dict({"video": "v.mp4", "image": ["x", "y"]})),
        (Side(), Side()),
    ]:
        rendered = template.render(messages=chat_messages(DEFAULT, query, doc), add_generation_prompt=True)
        assert rendered == render_prompt(DEFAULT, query, doc)
