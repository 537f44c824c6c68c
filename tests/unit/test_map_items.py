"""The embedding map's input and output without a queue: JSONL items (labels, modalities, errors naming the line
and the field), the picture and the CSV from constructed vectors, and ``rerankq map``'s refusals."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rerankq.cli.main import main
from rerankq.client.embedmap.build import Embedded, compose
from rerankq.client.embedmap.items import parse_lines, read_items
from rerankq.client.embedmap.layout import decode
from rerankq.client.embedmap.plot import palette, plot_map
from rerankq.errors import InvalidRequest
from rerankq.settings import LimitSettings

LINES = [
    '"a plain text line"',
    '{"text": "a red fox", "label": "animals"}',
    '',
    '{"image": "s3://media/fox.png", "label": "animals"}',
    '{"video": ["s3://media/f0.png", "s3://media/f1.png"], "label": 3}',
    '{"text": "caption", "image": ["https://example.org/a.jpg", "s3://media/b.png"]}',
]


def test_lines_become_items_with_labels_and_modalities() -> None:
    items = parse_lines(LINES)
    assert [i.line for i in items] == [1, 2, 4, 5, 6]  # the blank line is skipped, numbers are the file's
    assert [i.label for i in items] == [None, "animals", "animals", "3", None]
    assert [i.modality for i in items] == ["text", "text", "image", "video", "text+image"]
    assert items[0].side == {"text": "a plain text line"}
    assert items[3].side == {"video": ["s3://media/f0.png", "s3://media/f1.png"]}
    assert [i.describe() for i in items] == ["a plain text line", "a red fox", "s3://media/fox.png",
                                             "s3://media/f0.png (+1)", "https://example.org/a.jpg (+1)"]


@pytest.mark.parametrize(("line", "field", "words"), [
    ('{"text": "x", "colour": "red"}', "line 1, field colour", "unknown field (allowed: text, image, video, label)"),
    ('{"image": "fox.png"}', "line 1, field image", "must start with s3://, https:// or file://"),
    ('{"image": ["s3://m/a.png", 7]}', "line 1, field image", "expected a reference string or a list of them"),
    ('{"label": "only a label"}', "line 1", "needs at least one of text, image, video"),
    ('{"text": "x", "label": ["a"]}', "line 1, field label", "expected a string or a number, got list"),
    ('[1, 2]', "line 1", "expected a string or an object"),
    ('{"text": ', "line 1", "not JSON"),
])
def test_a_bad_line_names_its_number_and_field(line: str, field: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_lines([line])
    assert caught.value.field == field and words in str(caught.value)


def test_the_line_number_counts_blank_lines_and_limits_apply() -> None:
    with pytest.raises(InvalidRequest, match=r"^line 3, field image: image reference"):
        parse_lines(['"fine"', "", '{"image": "nope"}'])
    with pytest.raises(InvalidRequest, match=r"line 1, field image: 3 images, over the limit 2"):
        parse_lines(['{"image": ["s3://m/a", "s3://m/b", "s3://m/c"]}'], LimitSettings(max_images_per_side=2))
    with pytest.raises(InvalidRequest, match="no items"):
        parse_lines(["", "  "])


def test_an_unreadable_file_is_a_bad_request(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read"):
        read_items(tmp_path / "absent.jsonl")


def args(**over: object) -> argparse.Namespace:
    base = {"method": "tsne", "seed": 0, "perplexity": None, "neighbours": 3, "label_by": None, "query": None}
    return argparse.Namespace(**{**base, **over})


def three_groups() -> tuple[list[str], Embedded]:
    """Nine items in three labelled groups with clustered vectors; item 4 failed."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    lines = [json.dumps({"text": f"item {k}", "label": f"group {k // 3}"}) for k in range(9)]
    vectors: list[np.ndarray | None] = [centres[k // 3] + 0.05 * rng.normal(size=16) for k in range(9)]
    vectors[4] = None
    return lines, Embedded(vectors, {4: "s3://m/x.png: no such key"}, "tiny")


def test_the_picture_is_a_png_with_a_colour_per_label_and_the_rows_say_where_each_item_lies(tmp_path: Path) -> None:
    lines, done = three_groups()
    items = parse_lines(lines)
    query = done.vectors[7]
    picture, rows = compose(items, done, args(query="item seven"), query)
    assert list(picture.keys) == ["group 0"] * 3 + ["group 1"] * 2 + ["group 2"] * 3
    # positions among the eight embedded items: item 7 is the query's own vector, 6 and 8 its group
    assert picture.neighbours[0] == (6, pytest.approx(1.0)) and {i for i, _ in picture.neighbours[1:]} == {5, 7}
    png = plot_map(picture, tmp_path / "map.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1000, 750)
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    # every group's colour is on the picture (points are drawn at alpha 0.85 over white)
    for rgba in palette(picture.keys).values():
        expected = np.array(rgba[:3]) * 255 * 0.85 + 255 * 0.15
        assert np.abs(pixels.astype(float) - expected).max(axis=1).min() <= 3, rgba
    assert len(np.unique(pixels, axis=0)) > 50  # points, rings, legend, text: not a blank canvas
    kept = [r for r in rows if r["index"] not in (4, "query")]
    assert [r["index"] for r in kept] == [0, 1, 2, 3, 5, 6, 7, 8]
    ranked = {r["index"]: r["neighbour_rank"] for r in kept if r["neighbour_rank"]}
    assert ranked[7] == 1 and sorted(ranked) == [6, 7, 8] and sorted(ranked.values()) == [1, 2, 3]
    failed = [r for r in rows if r["index"] == 4]
    assert failed == [{"index": 4, "line": 5, "label": "group 1", "modality": "text", "ref": "item 4",
                       "error": "s3://m/x.png: no such key"}]
    assert rows[-1]["index"] == "query" and rows[-1]["ref"] == "item seven"


def test_by_modality_and_csv_rows(tmp_path: Path) -> None:
    from rerankq.client.embedmap.plot import write_csv

    lines, done = three_groups()
    items = parse_lines(lines)
    picture, rows = compose(items, done, args(label_by="modality", method="pca"), None)
    assert set(picture.keys) == {"text"} and picture.neighbours == [] and picture.query_point is None
    written = write_csv(tmp_path / "map.csv", rows)
    table = list(csv.DictReader(written.read_text().splitlines()))
    assert list(table[0]) == ["index", "line", "label", "modality", "x", "y", "ref", "neighbour_rank",
                              "similarity", "error"]
    laid = [r for r in table if r["x"]]
    assert len(laid) == 8 and max(abs(float(r[c])) for r in laid for c in "xy") == pytest.approx(1.0)
    assert [r["index"] for r in table if r["error"]] == ["4"]


def test_vectors_decode_from_floats_or_base64() -> None:
    import base64

    values = np.array([0.5, -1.25, 3.0], dtype="<f4")
    assert decode(base64.b64encode(values.tobytes()).decode()).tolist() == [0.5, -1.25, 3.0]
    assert decode([0.5, 1.0]).tolist() == [0.5, 1.0] and decode(None) is None


def test_the_command_refuses_a_bad_line_before_any_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "items.jsonl"
    source.write_text('"fine"\n{"image": "cat.png", "label": "cats"}\n')
    assert main(["map", str(source), "--plot", str(tmp_path / "m.png")]) == 2
    assert capsys.readouterr().err.strip() == ("invalid request: line 2, field image: image reference 'cat.png' "
                                               "must start with s3://, https:// or file://")
    assert main(["map", str(source)]) == 2
    assert "give --plot PNG, --csv CSV or both" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
