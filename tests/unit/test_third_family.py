"""Adding a model family takes a folder of its own and one line in the loader's table, nothing else: a scratch
family written into a temporary package (a toy word-overlap "reranker" whose checkpoint is a ``config.json``
naming its architecture) is registered in ``IMPLEMENTATIONS`` alone, loaded by ``load_model`` from its checkpoint
directory, and scored by the round engine, which refuses, unfetched, the image it declares it cannot read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rerankq.media.resolver import MediaResolver
from rerankq.media.sides import Side
from rerankq.models import loading
from rerankq.models.engine import JobInput, RoundEngine
from rerankq.settings import Settings

FAMILY = '''
from rerankq.capabilities import Capabilities
from rerankq.models.contract import prepare_each


class Pair:
    def __init__(self, query, document):
        self.query, self.document = query, document
        self.length = len(query) + len(document)
        self.prefix = None


class Overlap:
    """Share of the query's words found in the document."""

    def __init__(self, name):
        self.name, self.device, self.preprocessor = name, "cpu", None
        self.capabilities = Capabilities(task="rerank", max_length=64)

    def cache_identity(self):
        return "scratch-overlap-1"

    def prepare(self, instruction, query, document):
        return Pair(set(" ".join(query.texts).split()), set(" ".join(document.texts).split()))

    def prepare_job(self, instruction, query, documents):
        return prepare_each(self, instruction, query, documents)

    def cap_texts(self, side, max_tokens):
        return side

    def forward(self, pairs):
        return [len(p.query & p.document) / max(len(p.query), 1) for p in pairs]


def from_pretrained(path, name, opts):
    return Overlap(name)
'''


def test_a_family_in_its_own_folder_and_one_table_line_is_served(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "scratchfamily"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text(FAMILY)
    checkpoint = tmp_path / "overlap-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"architectures": ["OverlapForRanking"]}))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(loading.IMPLEMENTATIONS, "OverlapForRanking", "scratchfamily.model:from_pretrained")
    try:
        model = loading.load_model(str(checkpoint))
        engine = RoundEngine(model, MediaResolver(Settings(), model.preprocessor), Settings().batch)
        never = tmp_path / "never-read.png"  # fetching it would fail as "not found"
        job = JobInput("j", Side(texts=["red wooden chair"]),
                       [Side(texts=["a red chair"]), Side(texts=["blue sky"]), Side(images=[str(never)])], "")
        outcome = engine.run([job])[0]
    finally:
        sys.modules.pop("scratchfamily.model", None)
        sys.modules.pop("scratchfamily", None)
    assert outcome.scores[:2] == pytest.approx([2 / 3, 0.0])
    assert outcome.scores[2] is None and "reads text documents only" in outcome.errors[2]
