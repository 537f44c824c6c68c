"""The benchmarks are not installed, so nothing else imports them: each one must at least import, with the
installed names it uses (``python -m bench.NAME`` from a checkout, ``rerankq bench``)."""

from __future__ import annotations

import importlib

import pytest

from tests.typecheck import ROOT

MODULES = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", MODULES)
def test_a_benchmark_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")


def test_rerankq_bench_finds_the_benchmarks() -> None:
    from rerankq.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--workload", "10x2:text"])
    assert args.func.__module__ == "bench.throughput"


def test_the_embedding_bench_refuses_cache_without_engine(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.embedding import main

    with pytest.raises(SystemExit) as stopped:
        main(["--cache"])
    assert stopped.value.code == 2 and "--cache: only with --engine or --queue" in capsys.readouterr().err
