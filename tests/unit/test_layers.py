"""The layer rules: the producer side works without torch, transformers or worker code; the subpackages read
bottom-up (shared contract -> media -> models -> worker and client -> cli); and no two files import each
other, directly or round a loop, late imports inside functions included."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.typecheck import ROOT, package_dirs

LAYERS = {"rerankq": 0, "rerankq.media": 1, "rerankq.models": 2, "rerankq.worker": 3, "rerankq.client": 3,
          "rerankq.cli": 4}


def test_producer_and_cli_import_without_torch_or_workers() -> None:
    code = ("import sys; import rerankq.client, rerankq.client.cli, rerankq.cli.main as m; m.build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
            "or m.startswith(('rerankq.worker', 'rerankq.models'))]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def modules() -> dict[str, Path]:
    """Every module of the installed package, by import name, and its file."""
    out: dict[str, Path] = {}
    for name, folder in package_dirs().items():
        base = ROOT / folder
        paths = base.glob("*.py") if name == "rerankq" else base.rglob("*.py")
        for path in paths:
            parts = [*name.split("."), *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute imports, at any depth of the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # ``from pkg import module``
    return found


def layer_of(module: str) -> str:
    return max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)


def test_layers_read_bottom_up() -> None:
    """The shared contract imports nothing above it; media and models know nothing of the worker, the client
    or the cli; the client knows no model; only the cli imports everything."""
    upward = []
    for module, path in modules().items():
        mine = layer_of(module)
        for target in imports_of(path):
            if target.split(".")[0] == "rerankq":
                theirs = layer_of(target)
                if theirs != mine and LAYERS[theirs] >= LAYERS[mine]:
                    upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert upward == []


def file_cycles() -> list[str]:
    """The import cycles between the package's files, each as ``a -> b -> a``."""
    mods = modules()
    graph = {m: sorted({t for t in imports_of(p) if t in mods and t != m} - {m}) for m, p in mods.items()}
    # a package's __init__ importing its own modules is how a package exports them, not a cycle
    graph = {m: [t for t in ts if not t.startswith(m + ".")] for m, ts in graph.items()}
    cycles: list[list[str]] = []
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        colour[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if colour.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif not colour.get(nxt):
                visit(nxt)
        stack.pop()
        colour[node] = 2

    for node in sorted(graph):
        if not colour.get(node):
            visit(node)
    return [" -> ".join(c) for c in cycles]


def test_no_file_imports_itself_round_a_loop() -> None:
    """Zero cycles between files, inside folders as across them: a late import does not hide one."""
    assert file_cycles() == []


def test_workers_import_nothing_of_a_model_implementation() -> None:
    """The worker meets models through rerankq.models.contract: no Qwen module, no torch, no transformers."""
    offending = {m: sorted(t for t in imports_of(p) if t.startswith(("rerankq.models.qwen3vl", "torch",
                                                                      "transformers")))
                 for m, p in modules().items() if m.startswith("rerankq.worker")}
    assert {m: t for m, t in offending.items() if t} == {}


def test_media_knows_nothing_of_the_model_side() -> None:
    found = {t for m, p in modules().items() if m.startswith("rerankq.media") for t in imports_of(p)}
    assert not {t for t in found if t.startswith(("rerankq.models", "rerankq.worker", "rerankq.client",
                                                  "rerankq.cli", "transformers"))}


def test_one_installed_package_lists_every_folder() -> None:
    """pyproject's ``packages`` names every package folder, so ``pip install .`` installs them all."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {m for m, p in modules().items() if p.name == "__init__.py"} | {"rerankq"}
    assert found == listed


def test_runtime_is_typed_with_the_model_contract() -> None:
    from typing import get_type_hints

    from rerankq.models.contract import RerankModel
    from rerankq.worker.runtime import Runtime

    hint = get_type_hints(Runtime.__init__)["model"]
    assert getattr(hint, "__origin__", hint) is RerankModel


def qwen_policy_in(path: Path, numbers: set[int], instruction: str) -> list[str]:
    """What of Qwen3-VL-Reranker's own policy a file holds, in code: its default numbers (max length, vision
    token bounds) as literals, its instruction as a string, ``qwen`` in a name it defines or uses, an import of
    its package. Prose (docstrings, comments) may still name it; ``True``/``False`` are not numbers here."""
    found = []
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    for node in ast.walk(ast.parse(path.read_text())):
        line = f"{shown}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value in numbers:
            found.append(f"{line} the literal {node.value}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and instruction in node.value:
            found.append(f"{line} the instruction {instruction[:30]!r}...")
        name = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                else node.name if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) else "")
        if "qwen" in name.lower():
            found.append(f"{line} the name {name}")
    found += [f"{shown} imports {t}" for t in imports_of(path) if "qwen" in t.lower()]
    return found


def test_no_qwen_policy_outside_its_implementation() -> None:
    """Qwen3-VL-Reranker's defaults live in ``rerankq.models.qwen3vl`` (its capabilities): the worker, the media
    layer and the core hold none of them, so another model family gets its own defaults, never Qwen's."""
    from rerankq.models import qwen3vl

    numbers = {qwen3vl.DEFAULT_MAX_LENGTH, qwen3vl.IMAGE_MAX_TOKENS, qwen3vl.VIDEO_MAX_TOKENS}
    layers = ("rerankq.worker", "rerankq.media")
    paths = [p for m, p in modules().items() if m.startswith(layers) or layer_of(m) == "rerankq"]
    assert len(paths) > 40 and any(p.name == "settings.py" for p in paths)  # the rule sees the layers
    assert [f for p in paths for f in qwen_policy_in(p, numbers, qwen3vl.DEFAULT_INSTRUCTION)] == []


def test_the_qwen_policy_rule_can_fail(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""Qwen may be named in prose."""\nMAX = 10240\nON = True\nTEXT = "Say: Given a search query, '
                      'retrieve it."\nfrom rerankq.models.qwen3vl import vision\nqwen_vision = vision\n')
    found = qwen_policy_in(sample, {10240, 1}, "Given a search query")
    assert sorted(f.split(" ", 1)[1] for f in found) == sorted([
        "the literal 10240", "the instruction 'Given a search query'...", "the name qwen_vision",
        "imports rerankq.models.qwen3vl", "imports rerankq.models.qwen3vl.vision"])
