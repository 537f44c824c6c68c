"""A results part's embeddings as ``.npy`` files with an index (batches submitted with ``npy``).

Beside ``results/part-NNNNN.jsonl``: ``results/part-NNNNN.npy``, float32, one row per input of every embedding
line of the part, lines in the part's order and each line's inputs in their order; an input that failed is a
row of NaN (never mistaken for a vector: any similarity with it is NaN). ``results/part-NNNNN.index.jsonl``:
one line per embedding line, ``{"custom_id", "line", "file", "row", "rows"}``: its rows are ``row`` to
``row + rows - 1`` of ``file``. Lines of another width (another ``dimensions``) go to their own file,
``part-NNNNN-dD.npy``. Rerank lines have no rows. Written with the standard library: no numpy needed here.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

from rerankq.results import vector_bytes

NAN = math.nan


def npy_bytes(rows: list[list[float]], width: int) -> bytes:
    """``rows`` (each ``width`` long) as a version 1.0 ``.npy`` of little-endian float32."""
    return _npy([struct.pack(f"<{width}f", *row) for row in rows], width)


def _npy(rows: list[bytes], width: int) -> bytes:
    """Rows already packed as ``width`` little-endian float32 each, behind a version 1.0 ``.npy`` header."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({len(rows)}, {width}), }}"
    pad = 64 - (10 + len(header) + 1) % 64
    head = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header) + pad + 1) + (header + " " * pad + "\n").encode()
    return head + b"".join(rows)


def _row(vector: list[float] | str | None, width: int) -> bytes:
    """One row's bytes: the vector's own float32 bytes (base64 decoded, never unpacked), NaN for a failed input."""
    return struct.pack(f"<{width}f", *([NAN] * width)) if vector is None else vector_bytes(vector)


def part_files(lines: list[dict[str, Any]], name: str) -> tuple[dict[str, bytes], str]:
    """The ``.npy`` files (file name → bytes) and the index (JSONL text) of a results part's lines; nothing
    when no line is an embedding line."""
    by_width: dict[int, list[bytes]] = {}
    index = []
    for line in lines:
        if line.get("task") != "embed":
            continue
        width = int(line["dimensions"])
        rows = by_width.setdefault(width, [])
        first = next(iter(by_width))
        file = f"{name}.npy" if width == first else f"{name}-d{width}.npy"
        index.append({"custom_id": line.get("custom_id"), "line": line["line"], "file": file, "row": len(rows),
                      "rows": len(line["embeddings"])})
        rows.extend(_row(v, width) for v in line["embeddings"])
    if not index:
        return {}, ""
    first = next(iter(by_width))
    files = {(f"{name}.npy" if w == first else f"{name}-d{w}.npy"): _npy(rows, w) for w, rows in by_width.items()}
    return files, "".join(json.dumps(entry, separators=(",", ":")) + "\n" for entry in index)
