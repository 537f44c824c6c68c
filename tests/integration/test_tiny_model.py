"""`rerankq tiny-model DIR`: offline, deterministic, the real tokenizer, loadable like a released checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from rerankq.models.loading import load_model


def test_cli_writes_a_loadable_deterministic_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "tiny"
    done = subprocess.run([sys.executable, "-m", "rerankq.cli", "tiny-model", str(out)],
                          capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote a tiny random-weight" in done.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
            "video_preprocessor_config.json", "chat_template.jinja"} <= names
    # Same seed, same weights as the session's checkpoint (written in-process).
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(tiny_model_dir / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)

    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "qwen3_vl" and config.image_token_id == 151655
    assert config.text_config.rope_parameters["mrope_section"] == [4, 2, 2]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids(["yes", "no", "<|image_pad|>"]) == [9693, 2152, 151655]
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["patch_size"] == 16 and processor["merge_size"] == 2
    assert load_model(str(out)).name == "tiny"
