"""A checkpoint's content identity, for the score cache: honest (any changed file changes it) and quick on every
start after the first.

- a Hugging Face hub snapshot (``…/snapshots/<commit>/``, where a hub id is loaded from): its commit hash.
  Git names every file by its content, so the commit names the checkpoint's content; nothing is read.
- any other directory: sha256 over every file's relative path and sha256 digest (hidden files and folders
  excluded: download markers, local tool caches). Each file's digest is remembered in a sidecar,
  ``fingerprints.json`` in the model cache directory, keyed by (real path, size, mtime_ns): a 16 GB
  checkpoint is read once (~10–30 s at 0.5–1.5 GB/s), and a restart costs a ``stat`` per file. A file
  rewritten in place gets a new mtime, so it is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

SIDECAR = "fingerprints.json"
_SNAPSHOT = re.compile(r"/snapshots/([0-9a-f]{40})$")
_CHUNK = 8 * 2**20
_lock = threading.Lock()


def local_checkpoint(path: str) -> Path:
    """The directory a checkpoint SPEC was loaded from: the path itself, or a hub id's cached snapshot."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    from transformers.utils import cached_file

    resolved = cached_file(path, "config.json")
    if resolved is None:
        raise FileNotFoundError(f"{path!r}: no cached config.json")
    return Path(resolved).parent


def checkpoint_fingerprint(directory: str | Path, sidecar_dir: str | Path) -> str:
    """``hf-commit:<sha>`` for a hub snapshot, else ``sha256:<digest of paths and file digests>``."""
    directory = Path(directory).expanduser().absolute()
    snapshot = _SNAPSHOT.search(directory.as_posix().rstrip("/"))
    if snapshot:
        return f"hf-commit:{snapshot.group(1)}"
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not _hidden(p.relative_to(directory)))
    sidecar = Path(sidecar_dir).expanduser() / SIDECAR
    manifest = hashlib.sha256()
    with _lock:
        known = _load(sidecar)
        memos = {path: _memo(path) for path in files}
        fresh = [path for path, memo in memos.items() if memo not in known]
        for path in fresh:
            known[memos[path]] = _file_digest(path)
        for path in files:
            manifest.update(f"{path.relative_to(directory).as_posix()}\0{known[memos[path]]}\n".encode())
        if fresh:
            logger.info("hashed %d files of %s for the score cache", len(fresh), directory)
            current = set(memos.values())
            paths = {_path_of(m) for m in current}  # older versions of these files, and files gone, are dropped
            _save(sidecar, {m: d for m, d in known.items()
                            if m in current or (_path_of(m) not in paths and os.path.exists(_path_of(m)))})
    return f"sha256:{manifest.hexdigest()}"


def _memo(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _path_of(memo: str) -> str:
    return memo.rsplit("|", 2)[0]


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load(sidecar: Path) -> dict[str, str]:
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save(sidecar: Path, known: dict[str, str]) -> None:
    """Write atomically (workers on one machine may start together); a read-only place only costs a rehash."""
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=sidecar.parent, prefix=".fingerprints-", delete=False) as out:
            json.dump(known, out)
        os.replace(out.name, sidecar)
    except OSError as exc:
        logger.warning("could not remember checkpoint digests in %s (%s): the next start hashes again", sidecar, exc)
