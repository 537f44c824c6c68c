"""docs/CONFIG.md, generated from the settings object: every knob with its environment name, type and unit,
default and meaning, one table per section.

``python -m rerankq.configdoc`` prints the page; ``python -m rerankq.configdoc --write [PATH]`` writes it
(default ``docs/CONFIG.md``, run from the checkout's root). ``tests/unit/test_settings.py`` regenerates it and
fails while the file and ``rerankq.settings`` disagree, so a knob's description is edited in the code only.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from rerankq.settings import Settings

# Name endings that carry a unit (the settings spell every unit in the name).
UNITS = (("_ms", "milliseconds"), ("_s", "seconds"), ("_seconds", "seconds"), ("_bytes", "bytes"),
         ("_pixels", "pixels"), ("_tokens", "tokens"), ("_chars", "characters"))

INTRO = """\
# Configuration

<!-- Generated from rerankq/settings.py by `python -m rerankq.configdoc --write`; do not edit by hand:
     tests/unit/test_settings.py fails while this file and the code differ. -->

Every knob of rerankq lives in one settings object, `rerankq.settings.Settings` (pydantic-settings). Each
process reads it from `RERANKQ_*` environment variables (or takes it as arguments: `Settings(redis_url=...)`,
`RerankClient(redis_url=...)`); nothing else in the code reads the environment. Sections use a double
underscore: `RERANKQ_BATCH__MAX_TOKENS=65536` sets `settings.batch.max_tokens`. A bad value stops the process
with an error naming the setting; messages name a setting both ways (`limits.max_documents,
RERANKQ_LIMITS__MAX_DOCUMENTS`). Comma-separated lists are written `a,b,c`.

Producers, the gateway and workers read the same names: give them the same values where a knob concerns
both sides (`RERANKQ_REDIS_URL`, `RERANKQ_QUEUE_PREFIX`, `RERANKQ_MODEL`, the limits, the callback targets).
Outside this object: AWS credentials (the standard AWS chain), `HF_TOKEN` for gated checkpoints, and
Flower's own `FLOWER_*` variables ([DEPLOYMENT.md](DEPLOYMENT.md#3-flower)).
"""


def _name(annotation: Any) -> str:
    """A field's type in words: ``int``, ``one of auto, sdpa``, ``comma-separated list``, ``string, secret``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(annotation))
    if origin is list:
        return "comma-separated list"
    if annotation is SecretStr:
        return "string, secret"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(annotation, str(annotation))


def _optional(annotation: Any) -> Any:
    """``X | None`` → ``X``; anything else → ``None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return None


def _bounds(info: FieldInfo) -> str:
    """The field's numeric bounds, as written in its ``Field`` (``≥ 1``, ``> 0``, ``≤ 65535``)."""
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for item in info.metadata:
        for attr, sign in signs.items():
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return " and ".join(parts)


def type_and_unit(name: str, info: FieldInfo) -> str:
    """``int ≥ 1, seconds``: the type, its bounds, whether it may be unset, and the unit its name ends in."""
    inner = _optional(info.annotation)
    parts = [" ".join(part for part in (_name(inner or info.annotation), _bounds(info)) if part)]
    if inner is not None:
        parts.append("optional")
    parts += [unit for ending, unit in UNITS if name.endswith(ending)][:1]
    return ", ".join(parts)


def shown_default(info: FieldInfo) -> str:
    """The default as an environment value would spell it."""
    default = info.get_default(call_default_factory=True)
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(default, list):
        default = ",".join(default)
    if default is None:
        return "unset"
    if isinstance(default, bool):
        default = str(default).lower()
    return f"`{default}`" if default != "" else "empty"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(model: type[BaseModel], prefix: str) -> str:
    """One section's knobs (the fields that are not sections themselves) as a Markdown table."""
    rows = ["| variable | type, unit | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if _section(info) is not None:
            continue
        rows.append(f"| `{prefix}{name.upper()}` | {_cell(type_and_unit(name, info))} | "
                    f"{_cell(shown_default(info))} | {_cell(info.description or '')} |")
    return "\n".join(rows)


def _section(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _summary(model: type[BaseModel]) -> str:
    """The first paragraph of a section's docstring, on one line."""
    return " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())


def markdown() -> str:
    """The whole page: the introduction, the top-level knobs, then one table per section."""
    parts = [INTRO, "## Top level\n", table(Settings, "RERANKQ_") + "\n"]
    for name, info in Settings.model_fields.items():
        section = _section(info)
        if section is None:
            continue
        prefix = f"RERANKQ_{name.upper()}__"
        parts.append(f"## `{name}`: `{prefix}*`\n\n{_summary(section)}\n")
        parts.append(table(section, prefix) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rerankq.configdoc", description="Print or write docs/CONFIG.md.")
    parser.add_argument("--write", nargs="?", const="docs/CONFIG.md", default=None, metavar="PATH",
                        help="write the page to PATH (default docs/CONFIG.md) instead of printing it")
    args = parser.parse_args(argv)
    if args.write is None:
        print(markdown(), end="")
    else:
        Path(args.write).write_text(markdown())


if __name__ == "__main__":
    main()
