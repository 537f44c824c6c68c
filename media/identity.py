"""What a medium *is*, as a short string: the content identity a score cache keys on, never where it lives.

- an S3 object: ``md5:<etag>`` when its ETag is the MD5 of its bytes (a single-part upload, not encrypted
  with SSE-KMS or SSE-C: S3's documented rule), so the same bytes under any key are the same medium;
  otherwise ``s3:<bucket>/<key>#<etag>#<version id>`` (a multipart or KMS ETag says nothing about other
  objects). Either way an overwritten object is a new medium;
- bytes fetched over https, and local files: ``sha256:<digest of the bytes>`` (a file's digest is kept
  while its size, mtime and inode stay the same);
- a video given as a list of frames: ``frames:<digest>`` over the number of frames and the identities of
  the frames sampled from it (only those reach the model).

A side's media are tagged with their kind in prompt order (videos, then images): ``video=…``, ``image=…``.
The same identities come out before a fetch (``Side`` + identities from ``MediaStore.identify``: S3 HEAD,
file digest) and after it (``ResolvedSide.media``, from the bytes actually decoded), so a key computed
early equals the key computed from what the model saw.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rerankq.media.decode import sample_frame_list
from rerankq.media.sides import Side, VisionBudget

_MD5 = re.compile(r"[0-9a-f]{32}")
_CHUNK = 2**20
_FILE_MEMO_SIZE = 4096
_file_memo: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()
_file_lock = threading.Lock()


def s3_identity(bucket: str, key: str, head: Mapping[str, Any]) -> str | None:
    """The identity of an S3 object from a HEAD or GET response (``ETag``, ``VersionId``, encryption)."""
    etag = str(head.get("ETag") or "").strip('"').lower()
    if not etag:
        return None
    kms = str(head.get("ServerSideEncryption") or "").startswith("aws:kms")
    if _MD5.fullmatch(etag) and not kms and not head.get("SSECustomerAlgorithm"):
        return f"md5:{etag}"
    version = head.get("VersionId") or ""
    return f"s3:{bucket}/{key}#{etag}#{'' if version == 'null' else version}"


def bytes_identity(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def file_identity(path: Path) -> str:
    """The digest of a local file's bytes, remembered while its size, mtime and inode do not change."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    with _file_lock:
        if memo in _file_memo:
            _file_memo.move_to_end(memo)
            return _file_memo[memo]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    identity = f"sha256:{digest.hexdigest()}"
    with _file_lock:
        _file_memo[memo] = identity
        while len(_file_memo) > _FILE_MEMO_SIZE:
            _file_memo.popitem(last=False)
    return identity


def frames_identity(count: int, sampled: list[str | None]) -> str | None:
    """A frame list of ``count`` frames from the identities of its sampled frames (None if one is unknown)."""
    if any(s is None for s in sampled):
        return None
    return "frames:" + hashlib.sha256("\n".join([str(count), *map(str, sampled)]).encode()).hexdigest()


def tagged(kind: str, identity: str | None) -> str | None:
    """A medium's identity with its kind, as a side lists it (``image=md5:…``, ``video=frames:…``)."""
    return None if identity is None else f"{'image' if kind == 'image' else 'video'}={identity}"


def side_refs(side: Side, budget: VisionBudget) -> list[str]:
    """The references whose identities ``side_media`` needs: images, video files, the sampled frames."""
    refs = [v for v in side.videos if isinstance(v, str)]
    for video in side.videos:
        if isinstance(video, list):
            refs += [video[i] for i in sample_frame_list(len(video), budget.max_frames) if isinstance(video[i], str)]
    return refs + [i for i in side.images if isinstance(i, str)]


def side_media(side: Side, budget: VisionBudget, known: Mapping[str, str | None]) -> list[str] | None:
    """The side's media identities in prompt order (videos, then images), from ``known`` identities of its
    references; None when one is unknown (a PIL image, a reference that could not be identified)."""
    out: list[str | None] = []
    for video in side.videos:
        if isinstance(video, list):
            sampled = [video[i] for i in sample_frame_list(len(video), budget.max_frames)]
            ids = [known.get(f) if isinstance(f, str) else None for f in sampled]
            out.append(tagged("video", frames_identity(len(video), ids)))
        else:
            out.append(tagged("video", known.get(video) if isinstance(video, str) else None))
    out += [tagged("image", known.get(i) if isinstance(i, str) else None) for i in side.images]
    if any(m is None for m in out):
        return None
    return [m for m in out if m is not None]


def local_identity(path: str | os.PathLike[str]) -> str | None:
    """``file_identity`` that says None instead of raising (a file that vanished, no permission)."""
    try:
        return file_identity(Path(path))
    except OSError:
        return None
