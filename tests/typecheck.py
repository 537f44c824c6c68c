"""mypy over the installed layout: ``python -m tests.typecheck [mypy args]``.

The package ``rerankq`` has its subpackages in the repository's top-level folders (``pyproject.toml``'s
``package-dir``: ``workers/`` is ``rerankq.worker``, ...). mypy cannot follow setuptools' editable import hook, so
this lays out a tree of links with the installed names (``.typecheck/rerankq/worker`` → ``workers/``) and runs
mypy on it: modules are checked under the names they are imported by.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path = ROOT) -> dict[str, str]:
    """``pyproject.toml``'s package-dir: import name → folder."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return dict(config["tool"]["setuptools"]["package-dir"])


def link_tree(out: Path, root: Path = ROOT) -> Path:
    """Links under ``out`` that spell the installed package of the checkout at ``root``; returns the package's
    folder."""
    shutil.rmtree(out, ignore_errors=True)
    dirs = package_dirs(root)
    top = out / "rerankq"
    top.mkdir(parents=True)
    for source in (root / dirs.pop("rerankq")).iterdir():
        if source.suffix == ".py":
            os.symlink(source, top / source.name)
    for name, folder in dirs.items():
        os.symlink(root / folder, out.joinpath(*name.split(".")))
    return top


def main(argv: list[str]) -> int:
    top = link_tree(ROOT / ".typecheck")
    return subprocess.call([sys.executable, "-m", "mypy", *argv, str(top)], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
