"""The map's items: a JSONL file, one item a line, → what to embed, its label and its modality.

A line is a side as in a rerank job (docs/USAGE.md, *The job*): a JSON string (a text), or an object with any of
``text``, ``image`` (a reference or a list of them), ``video`` (a reference, or a list of frame references),
plus an optional ``label`` (a string or a number) that colours its point. Blank lines are skipped. A bad line is
an ``InvalidRequest`` naming its number and the field: ``line 3, field image: reference 'cat.png' must start
with s3://, https:// or file://``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rerankq.errors import InvalidRequest
from rerankq.schema import SideSpec
from rerankq.settings import LimitSettings

MODALITIES = ("text", "image", "video")


@dataclass(frozen=True)
class Item:
    """One line's item: ``side`` as an embed job takes it, its ``label`` (None when the line has none) and
    ``modality`` (what it holds: ``text``, ``image``, ``video``, or a mix such as ``text+image``)."""

    line: int
    side: dict[str, Any]
    label: str | None
    modality: str

    def describe(self) -> str:
        """The item in one line: its first reference (with a count of the others), else its text."""
        for kind in ("image", "video"):
            refs = self.side.get(kind)
            if refs:
                refs = [refs] if isinstance(refs, str) else refs
                return refs[0] + (f" (+{len(refs) - 1})" if len(refs) > 1 else "")
        return str(self.side.get("text", ""))


def _where(line: int, loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p in ("str", "list[str]") or "function" in p))]
    path = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in parts).lstrip(".")
    return f"line {line}, field {path}" if path else f"line {line}"


def parse_item(data: Any, line: int, limits: LimitSettings | None = None) -> Item:
    """One decoded JSONL line → an ``Item``; ``InvalidRequest`` naming the line and the field."""
    if isinstance(data, str):
        data = {"text": data}
    if not isinstance(data, dict):
        raise InvalidRequest(f"expected a string or an object with any of text, image, video, label; got "
                             f"{type(data).__name__}", f"line {line}")
    fields = dict(data)
    label = fields.pop("label", None)
    if label is not None and (isinstance(label, bool) or not isinstance(label, str | int | float)):
        raise InvalidRequest(f"expected a string or a number, got {type(label).__name__}", f"line {line}, field label")
    try:
        side = SideSpec.model_validate(fields, context={"limits": limits or LimitSettings()})
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field (allowed: text, image, video, label)"
        elif first["type"] in ("string_type", "list_type") and first["loc"][0] in ("image", "video"):
            message = "expected a reference string or a list of them"
        raise InvalidRequest(message, _where(line, first["loc"])) from None
    wire = side.model_dump(exclude_none=True)
    modality = "+".join(m for m in MODALITIES if m in wire)
    return Item(line, wire, None if label is None else str(label), modality)


def parse_lines(lines: Iterable[str], limits: LimitSettings | None = None) -> list[Item]:
    """Every non-blank line → an ``Item``, in order; the first bad line raises."""
    items = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"not JSON: {exc.msg} (column {exc.colno})", f"line {number}") from None
        items.append(parse_item(data, number, limits))
    if not items:
        raise InvalidRequest("no items: every line is blank", "input")
    return items


def read_items(path: str | Path, limits: LimitSettings | None = None) -> list[Item]:
    """The items of a JSONL file (``-`` reads stdin)."""
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", "input") from None
    return parse_lines(text.splitlines(), limits)
