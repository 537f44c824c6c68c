"""The layer rules: the producer side works without torch, transformers or worker code; the folders read
bottom-up (shared contract -> media and model -> workers and producer -> shell)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def test_producer_and_cli_import_without_torch_or_workers() -> None:
    code = ("import sys; import producer, producer.cli, shell.cli; shell.cli.build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'workers', 'reranker')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"rerankq": 0, "media": 1, "reranker": 2, "workers": 3, "producer": 3, "shell": 4}


def imports_of(package: str) -> dict[str, set[str]]:
    """Every module a package's files import (absolute imports, at any depth of the file), by file."""
    out: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
        out[str(path.relative_to(ROOT))] = found
    return out


def test_workers_import_nothing_of_a_model_implementation() -> None:
    """The engine meets models through reranker.contract: no Qwen module, no torch, no transformers."""
    offending = {f: sorted(m for m in mods if m.startswith(("reranker.qwen3vl", "torch", "transformers")))
                 for f, mods in imports_of("workers").items()}
    assert {f: m for f, m in offending.items() if m} == {}


def test_layers_read_bottom_up() -> None:
    """The shared contract imports nothing above it; media and model know nothing of workers, producer or
    the shell; the producer knows no model; only the shell imports everything."""
    upward = []
    for package, level in LAYERS.items():
        for path, modules in imports_of(package).items():
            for module in modules:
                top = module.split(".")[0]
                if top in LAYERS and top != package and LAYERS[top] >= level:
                    upward.append(f"{path} imports {module}")
    assert upward == []


def test_media_knows_nothing_of_the_model_side() -> None:
    mods = {m for found in imports_of("media").values() for m in found}
    assert not {m for m in mods if m.split(".")[0] in ("reranker", "workers", "producer", "shell", "transformers")}


def test_runtime_is_typed_with_the_model_contract() -> None:
    from typing import get_type_hints

    from reranker.contract import RerankModel
    from workers.runtime import Runtime

    hint = get_type_hints(Runtime.__init__)["model"]
    assert getattr(hint, "__origin__", hint) is RerankModel
