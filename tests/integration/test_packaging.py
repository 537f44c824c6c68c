"""``pip install .`` puts one package in site-packages: ``rerankq``, its subpackages built from the repository's
folders (pyproject's package-dir), the console's static files, and no benchmark or test code."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.typecheck import ROOT


def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    import setuptools

    # the environment's own setuptools when it is recent enough (pyproject asks >= 68); else pip fetches one
    own = ["--no-build-isolation"] if int(setuptools.__version__.split(".")[0]) >= 68 else []
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *own, "-q", "-w", str(tmp_path),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next(tmp_path.glob("rerankq-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"rerankq"}
    for module in ("rerankq/settings.py", "rerankq/worker/runtime.py", "rerankq/client/client.py",
                   "rerankq/models/engine.py", "rerankq/media/resolver.py", "rerankq/cli/main.py",
                   "rerankq/client/gateway/static/index.html"):
        assert module in names, module
    assert not [n for n in names if n.startswith(("bench/", "tests/", "rerankq/bench"))]
    scripts = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "rerankq = rerankq.cli.main:main" in scripts
