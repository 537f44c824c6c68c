"""Every name the documentation cites is real: each dotted ``rerankq.…`` name in README.md and docs/*.md imports
(the longest importable module, then attributes), and each source path it cites exists. Queue and task names
(``rerankq.high``, ``rerankq.rerank``) are names on the wire, not Python: they must be the ones ``rerankq.keys``
makes."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from rerankq import keys
from rerankq.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NAME = re.compile(r"(?<![\w/.:-])rerankq(?:\.[A-Za-z_]\w*)+")
FOLDERS = ("rerankq", "workers", "producer", "reranker", "media", "cli", "bench", "tests", "infra", "docs")
PATH = re.compile(rf"(?<![\w/.-])(?:{'|'.join(FOLDERS)})/[\w./-]*[\w/]")
# Cited before they exist: the round engine the lead is writing. Empty this once reranker/engine.py is merged
# (test_pending_names_do_not_resolve_yet fails as soon as one of them does).


def cited(pattern: re.Pattern[str]) -> dict[str, list[str]]:
    """Each match of ``pattern`` in the documentation → where it is cited (``file:line``)."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for match in pattern.finditer(line):
                found.setdefault(match.group(0).rstrip("."), []).append(f"{doc.relative_to(ROOT)}:{number}")
    return found


def wire_names() -> set[str]:
    """Queue and task names as ``rerankq.keys`` spells them under the default prefix."""
    settings = Settings(queue_prefix=str(Settings.model_fields["queue_prefix"].default))
    prefix = settings.queue_prefix
    return {keys.TASK_NAME, keys.BATCH_TASK_NAME, keys.control_queue(settings), *keys.queue_names(settings),
            f"{prefix}.m"}  # ``rerankq.m.<slug>.<priority>``: another model's queues


def resolve(name: str) -> Any:
    """Import the longest module prefix of ``name``, then get the rest as attributes."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        module = ".".join(parts[:end])
        try:
            found: Any = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):  # no such module: try a shorter prefix
                continue
            raise
        if not Path(str(found.__file__)).resolve().is_relative_to(ROOT):
            # a module this checkout lacks, found in another tree the environment installed: not this checkout's
            raise ModuleNotFoundError(f"{module} is not in this checkout ({found.__file__})", name=module)
        for attribute in parts[end:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


def broken(name: str) -> str | None:
    try:
        resolve(name)
    except (ImportError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def test_every_cited_rerankq_name_resolves() -> None:
    wire = wire_names()
    names = {n: where for n, where in cited(NAME).items() if n not in wire}
    assert len(names) > 10  # the pattern finds the names the docs cite
    failures = {name: (names[name][0], why) for name in sorted(names) if (why := broken(name))}
    assert failures == {}


def test_every_cited_source_path_exists() -> None:
    paths = dict(cited(PATH))
    assert "workers/runtime.py" in paths and "rerankq/settings.py" in paths
    # a folder written with a placeholder (``reranker/NAME/``) names no file
    missing = {p: where[0] for p, where in sorted(paths.items())
               if not (ROOT / p).exists() and not any(part.isupper() for part in p.split("/"))}
    assert missing == {}


def slug(heading: str) -> str:
    """A Markdown heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_docs_reaches_a_file_and_a_heading() -> None:
    link = re.compile(r"\]\(([\w/]+\.md)(?:#([\w-]+))?\)")
    broken_links = []
    for doc in DOCS:
        for target, anchor in link.findall(doc.read_text()):
            path = (doc.parent / target).resolve()
            headings = {slug(line.lstrip("#")) for line in path.read_text().splitlines()
                        if line.startswith("#")} if path.is_file() else set()
            if not path.is_file() or (anchor and anchor not in headings):
                broken_links.append(f"{doc.relative_to(ROOT)}: {target}#{anchor}")
    assert broken_links == []
