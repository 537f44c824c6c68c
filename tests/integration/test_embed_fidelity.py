"""Embedding fidelity: our vectors equal the official ``Qwen3VLEmbedder.process`` within 1e-5 per component (fp32).

The reference restates the official flow (QwenLM/Qwen3-VL-Embedding, src/models/qwen3_vl_embedding.py) with
what runs on this machine (qwen-vl-utils and torchvision are absent):

- ``format_model_input`` (lines 220-326 at commit 8ce3aab): the instruction stripped, "." added unless it
  ends in punctuation, default "Represent the user's input.", as the system message; the user content is the
  videos, then the images, then the texts, or the text "NULL" for an empty input;
- ``_preprocess_inputs`` (lines 329-361): the chat template with the generation prompt (rendered by jinja from
  the checkpoint's template, as ``apply_chat_template`` does); images through qwen-vl-utils' ``fetch_image``
  resize (min 4, max 1800 tokens) and transformers' image processor with ``do_resize=False``; the processor's
  pad expansion (one ``<|image_pad|>`` per merged patch; a video's placeholder replaced by ``<t seconds>`` + a
  pad group per temporal patch); the tokenizer with ``padding_side='right'``, ``truncation=True, max_length``.
  Video pixels come from our frame preprocessing (transformers' video processor needs torchvision); their
  layout is the reranker's, checked by its own tests;
- ``forward`` + ``_pooling_last`` (lines 193-198, 364-370; ``process`` 373-393): the backbone
  (``Qwen3VLForEmbedding.model``, a ``Qwen3VLModel``) over the whole batch at once, the hidden state at the
  last position whose attention mask is 1, ``F.normalize``.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from rerankq.cli.samples import image_bytes, mp4_bytes, noise_image
from rerankq.errors import InvalidRequest
from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import ResolvedSide, Side, VisionBudget
from rerankq.models.qwen3vl.vision import QwenVision, normalize, resize_image
from rerankq.models.qwen3vl_embed.loading import load_embedder
from rerankq.models.qwen3vl_embed.model import Embedder
from rerankq.settings import Settings

TOL = 1e-5
Official = tuple[Any, Any, Any, Any]  # backbone, tokenizer, chat template, image processor


@pytest.fixture(scope="module")
def embed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rerankq.models.qwen3vl_embed.tiny import write_tiny_embedding_model

    return write_tiny_embedding_model(tmp_path_factory.mktemp("tiny-embed"))


@pytest.fixture(scope="module")
def embedder(embed_dir: Path) -> Embedder:
    return load_embedder(str(embed_dir))


@pytest.fixture(scope="module")
def official(embed_dir: Path) -> Official:
    backbone = Qwen3VLForConditionalGeneration.from_pretrained(embed_dir, dtype=torch.float32).model.eval()
    tokenizer = AutoTokenizer.from_pretrained(embed_dir, padding_side="right")  # Qwen3VLEmbedder.__init__
    template = jinja2.Environment().from_string((embed_dir / "chat_template.jinja").read_text())
    images = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return backbone, tokenizer, template, images


def official_conversation(item: dict[str, Any], instruction: str | None) -> list[dict[str, Any]]:
    """``format_model_input``: system instruction; videos, images, texts (or "NULL")."""
    if instruction:
        instruction = instruction.strip()
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
    content = [{"type": "video", "video": v} for v in item.get("videos", [])]
    content += [{"type": "image", "image": i} for i in item.get("images", [])]
    content += [{"type": "text", "text": t} for t in item.get("texts", [])]
    return [{"role": "system", "content": [{"type": "text", "text": instruction or "Represent the user's input."}]},
            {"role": "user", "content": content or [{"type": "text", "text": "NULL"}]}]


def official_process(official: Official, items: list[dict[str, Any]], instruction: str | None = None,
                     max_length: int = 8192) -> torch.Tensor:
    """``Qwen3VLEmbedder.process`` over ``items`` (one batch), restated (see the module docstring)."""
    backbone, tokenizer, template, image_processor = official
    texts, images, videos = [], [], []
    for item in items:
        text = template.render(messages=official_conversation(item, instruction), add_generation_prompt=True)
        for frames in item.get("videos", []):  # the processor's video expansion (Qwen3VLProcessor)
            video = QwenVision().frames(frames, VisionBudget())
            n = len(frames) + len(frames) % 2  # an odd frame list is padded with its last frame
            secs = [i / 2.0 for i in range(n)]  # qwen-vl-utils gives frame lists 2 fps
            groups = "".join(f"<{(secs[2 * k] + secs[2 * k + 1]) / 2:.1f} seconds><|vision_start|>"
                             + "<|placeholder|>" * (video.grid_thw[1] * video.grid_thw[2] // 4) + "<|vision_end|>"
                             for k in range(video.grid_thw[0]))
            text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", groups, 1)
            videos.append(video)
        text = text.replace("<|placeholder|>", "<|video_pad|>")
        for image in item.get("images", []):
            vis = image_processor(images=[resize_image(image, 4, 1800)], do_resize=False, return_tensors="pt")
            text = text.replace("<|image_pad|>", "<|placeholder|>" * int(vis["image_grid_thw"][0].prod() // 4), 1)
            images.append(vis)
        texts.append(text.replace("<|placeholder|>", "<|image_pad|>"))
    inputs: dict[str, Any] = dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                                            return_tensors="pt"))
    if images:
        inputs["pixel_values"] = torch.cat([v["pixel_values"] for v in images])
        inputs["image_grid_thw"] = torch.cat([v["image_grid_thw"] for v in images])
    if videos:
        inputs["pixel_values_videos"] = torch.cat([normalize(v.pixel_values) for v in videos])
        inputs["video_grid_thw"] = torch.tensor([v.grid_thw for v in videos])
    if images or videos:
        ids = inputs["input_ids"]
        inputs["mm_token_type_ids"] = (ids == 151655).int() + 2 * (ids == 151656).int()
    with torch.no_grad():
        hidden = backbone(**inputs).last_hidden_state
    mask = inputs["attention_mask"]  # _pooling_last
    col = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
    return F.normalize(hidden[torch.arange(hidden.shape[0]), col], p=2, dim=-1)


def resolved(item: dict[str, Any]) -> ResolvedSide:
    """The same input as the media layer hands it to the model (videos first, then images)."""
    vision = QwenVision()
    return ResolvedSide(texts=list(item.get("texts", [])),
                        vision=[vision.frames(f, VisionBudget()) for f in item.get("videos", [])]
                        + [vision.image(i, VisionBudget()) for i in item.get("images", [])])


def assert_close(ours: np.ndarray, reference: torch.Tensor) -> None:
    assert ours.dtype == np.float32 and ours.shape == tuple(reference.shape)
    diff = np.abs(ours - reference.numpy()).max()
    assert diff <= TOL, f"max component difference {diff}"


def frames(seed: int, n: int = 4, size: tuple[int, int] = (64, 64)) -> list[Image.Image]:
    return [noise_image(*size, seed=seed + i) for i in range(n)]


TEXTS: list[dict[str, Any]] = [{"texts": ["a cat sleeping on a sofa"]}, {"texts": ["Qwen3-VL embeds 文本 and images."]},
         {"texts": ["two", " texts"]}, {}, {"texts": [""]}]
IMAGES: list[dict[str, Any]] = [{"images": [noise_image(64, 48, seed=1)]}, {"images": [noise_image(200, 90, seed=2)]},
          {"images": [noise_image(80, 80, seed=3), noise_image(40, 120, seed=4)]}]
VIDEOS: list[dict[str, Any]] = [{"videos": [frames(10)]}, {"videos": [frames(20, n=3, size=(96, 64))]}]
MIXED: list[dict[str, Any]] = [{"texts": ["a red square"], "images": [noise_image(64, 64, seed=5)]},
         {"texts": ["a clip"], "videos": [frames(30)]},
         {"texts": ["all of it"], "images": [noise_image(48, 48, seed=6)], "videos": [frames(40, n=2)]}]


@pytest.mark.parametrize("items", [TEXTS, IMAGES, VIDEOS, MIXED], ids=["text", "image", "video", "mixed"])
@pytest.mark.parametrize("instruction", [None, "  Retrieve images that match the caption  ", "Find it!"])
def test_vectors_equal_the_official_process(embedder: Embedder, official: Official, items: list[dict[str, Any]],
                                            instruction: str | None) -> None:
    reference = official_process(official, items, instruction)
    assert_close(embedder.embed([resolved(i) for i in items], instruction), reference)


def test_all_kinds_in_one_official_batch(embedder: Embedder, official: Official) -> None:
    items = [*TEXTS, *IMAGES, *VIDEOS, *MIXED]
    reference = official_process(official, items)
    ours = embedder.embed([resolved(i) for i in items])
    assert_close(ours, reference)
    assert np.abs(ours[0] - ours[1]).max() > 1e-3  # different inputs give different vectors


def test_the_instruction_changes_the_vector(embedder: Embedder) -> None:
    item = [resolved(TEXTS[0])]
    default, other = embedder.embed(item), embedder.embed(item, "Represent the caption for retrieval")
    assert np.abs(default - other).max() > 1e-3
    assert np.allclose(embedder.embed(item, "Represent the user's input"), default, atol=1e-6)  # "." added


def test_batching_does_not_change_vectors(embed_dir: Path) -> None:
    items = [resolved(i) for i in [*TEXTS, *IMAGES, *VIDEOS, *MIXED]]
    alone, packed = load_embedder(str(embed_dir)), load_embedder(str(embed_dir))
    alone.max_batch_inputs = 1
    packed.max_batch_tokens = 4096
    lengths = [packed.prepare(i).length for i in items]
    assert max(lengths) * 3 <= packed.max_batch_tokens  # the budget holds several inputs per pass
    one_by_one, many = alone.embed(items), packed.embed(items)
    assert np.abs(one_by_one - many).max() <= TOL
    tight = load_embedder(str(embed_dir))
    tight.max_batch_tokens = max(lengths) * 2  # several passes of a few inputs, mixed lengths
    assert np.abs(tight.embed(items) - one_by_one).max() <= TOL


def test_dimensions_truncate_then_renormalise(embedder: Embedder, official: Official) -> None:
    items = [*TEXTS[:2], *IMAGES[:1], *MIXED[:2]]
    full = official_process(official, items)
    for dims in (8, 32, 64):
        ours = embedder.embed([resolved(i) for i in items], dimensions=dims)
        assert_close(ours, F.normalize(full[:, :dims], p=2, dim=-1))
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("dims", [65, 0, -3])
def test_dimensions_out_of_range_are_refused_naming_the_limit(embedder: Embedder, dims: int) -> None:
    with pytest.raises(InvalidRequest, match=rf"^dimensions: {dims} is not between 1 and 64 \(the hidden size"):
        embedder.embed([resolved(TEXTS[0])], dimensions=dims)


def test_long_text_is_truncated_as_the_official_processor(embed_dir: Path, official: Official) -> None:
    short = load_embedder(str(embed_dir), max_length=24)
    items = [{"texts": ["word " * 40]}, {"texts": ["a short one"]}]
    reference = official_process(official, items, max_length=24)
    assert_close(short.embed([resolved(i) for i in items]), reference)
    assert [short.prepare(resolved(i)).truncated for i in items] == [True, False]


def test_cli_writes_the_tiny_embedding_checkpoint(tmp_path: Path, embedder: Embedder) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rerankq.cli", "tiny-model", str(tmp_path), "--family", "embedding"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "embedding checkpoint" in out.stdout
    items = [resolved(i) for i in [*TEXTS[:2], *IMAGES[:1]]]
    assert np.array_equal(load_embedder(str(tmp_path)).embed(items), embedder.embed(items))  # same seed, same weights
    from rerankq.models.loading import load_model

    served = load_model(str(tmp_path))  # the worker's loader tells it from the reranker of the same architecture
    assert served.capabilities.task == "embed" and served.capabilities.embedding_dim == embedder.hidden_size


# Inputs given as references, as a job gives them: the media resolver, with the embedder's preprocessor.

@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("embed-media")
    paths: dict[str, Any] = {}
    for name, image in {"cat.png": noise_image(64, 48, seed=1), "dog.png": noise_image(90, 60, seed=2),
                        **{f"f{i}.png": noise_image(64, 64, seed=10 + i) for i in range(4)}}.items():
        (root / name).write_bytes(image_bytes(image))
        paths[name] = str(root / name)
    (root / "clip.mp4").write_bytes(mp4_bytes(seconds=2.0, fps=10, seed=3))
    paths["clip.mp4"] = str(root / "clip.mp4")
    return paths


def resolve(embedder: Embedder, sides: list[Side]) -> list[Any]:
    settings = Settings(allow_file_urls=True, s3_endpoint_url=None)
    with MediaResolver(settings, embedder.preprocessor) as resolver:
        return list(resolver.resolve_sides(sides, VisionBudget()))


def test_referenced_images_and_frame_lists_embed_as_the_official_flow(embedder: Embedder, official: Official,
                                                                      files: dict[str, Any]) -> None:
    frame_paths = [files[f"f{i}.png"] for i in range(4)]
    sides = [Side.from_dict({"text": "a cat", "image": files["cat.png"]}),
             Side.from_dict({"image": [files["cat.png"], files["dog.png"]]}),
             Side.from_dict({"video": frame_paths, "text": ["frames", " of a clip"]}),
             Side.from_dict("just text")]
    pil = {name: Image.open(path) for name, path in files.items() if name.endswith(".png")}
    items: list[dict[str, Any]] = [
        {"texts": ["a cat"], "images": [pil["cat.png"]]}, {"images": [pil["cat.png"], pil["dog.png"]]},
        {"texts": ["frames", " of a clip"], "videos": [[pil[f"f{i}.png"] for i in range(4)]]},
        {"texts": ["just text"]}]
    ours = embedder.embed(resolve(embedder, sides), "Find the matching item")
    assert_close(ours, official_process(official, items, "Find the matching item"))


def test_a_video_file_samples_and_expands_as_qwen_vl_utils(embedder: Embedder, files: dict[str, Any]) -> None:
    """An mp4 (2 s at 10 fps): qwen-vl-utils' ``smart_nframes`` at fps 1 keeps max(2, 4) = 4 frames at
    ``round(linspace(0, 19, 4))``; each pair of frames is one temporal patch stamped with its mean time."""
    (item,) = resolve(embedder, [Side.from_dict({"video": files["clip.mp4"]})])
    (video,) = item.vision
    indices = np.linspace(0, 19, 4).round().astype(int).tolist()
    expected = [(indices[k] + indices[k + 1]) / 2 / 10 for k in (0, 2)]
    assert video.grid_thw[0] == 2 and video.timestamps == pytest.approx(expected)
    text = embedder.preparer.render(None, item)
    assert all(f"<{t:.1f} seconds><|vision_start|>" in text for t in expected)
    ids = embedder.prepare(item).input_ids
    assert ids.count(151656) == math.prod(video.grid_thw) // 4
    vectors = embedder.embed([item, *resolve(embedder, [Side.from_dict({"video": [files["f0.png"]] * 4})])])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3

