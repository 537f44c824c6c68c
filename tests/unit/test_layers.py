"""The layer rules: the producer side works without torch, transformers or worker code."""

from __future__ import annotations

import subprocess
import sys


def test_producer_and_cli_import_without_torch_or_workers() -> None:
    code = ("import sys; import producer, producer.cli, rerankq.cli; rerankq.cli.build_parser(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'workers', 'reranker')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
