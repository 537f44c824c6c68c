"""Sides with media references → sides with model-ready vision inputs (``ResolvedSide``).

The media layer fetches and decodes; what a decoded image or video *becomes* is the model's business, given
to the resolver as a ``Preprocessor`` (the Qwen3-VL one lives in ``rerankq.models.qwen3vl.vision``).

``MediaResolver.resolve_sides`` takes the sides of a whole batch (the queries and documents of many jobs),
finds the distinct media among them, and fetches + decodes each once, concurrently, on a pool of
``media.fetch_threads`` threads. Results go through a per-worker cache of decoded inputs bounded in bytes
(``media.cache_bytes``), keyed by the reference and the budget fields that change the result, so a query
image shared by 50 jobs is fetched and decoded once. A bad reference fails only the sides that hold it.

Images may also be ``PIL.Image`` objects (used as they are) and frame lists may mix images and references,
as the in-process API passes them. Cached inputs are shared: callers must not modify them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from rerankq.errors import MediaError, TransientMediaError
from rerankq.media.cache import DecodedCache
from rerankq.media.decode import decode_image, decode_video, flatten, orient, sample_frame_list
from rerankq.media.identity import frames_identity, tagged
from rerankq.media.sides import ResolvedSide, Side, VisionBudget, VisionError
from rerankq.media.store import MediaStore
from rerankq.settings import Settings, knob

log = logging.getLogger(__name__)


class Preprocessor(Protocol):
    """How a model turns decoded media into its inputs, within a request's ``VisionBudget``.

    The resolver calls these on its fetch threads and caches what they return (shared, never modified).
    Raise ``VisionError`` with a reason a user can act on when a medium cannot fit the model's limits.
    """

    def image(self, image: Image.Image, budget: VisionBudget) -> Any:
        """One decoded RGB image → the model's input for it."""

    def video(self, frames: torch.Tensor, indices: list[int], video_fps: float, budget: VisionBudget) -> Any:
        """Sampled frames of a video file, uint8 (T, C, H, W), their indices in the file and its fps."""

    def frames(self, images: list[Image.Image], budget: VisionBudget) -> Any:
        """A video given as a list of already sampled images."""

    def video_frame_size(self, nframes: int, height: int, width: int, budget: VisionBudget) -> tuple[int, int]:
        """The size each of ``nframes`` frames is brought to (lets the decoder shrink frames as it goes)."""

    def nbytes(self, item: Any) -> int:
        """Memory one input holds (the cache's bound is in bytes)."""


class _NoVision:
    """The preprocessor of a model that reads no image or video: ``MediaResolver._build`` refuses first."""

    def _none(self, *args: Any) -> Any:
        raise VisionError("this model reads no images or videos (text only)")

    image = video = frames = video_frame_size = _none

    def nbytes(self, item: Any) -> int:
        return 0


@dataclass(frozen=True)
class MediaStats:
    """What the media layer did since it started (or since ``reset_stats``)."""

    fetches: int = 0  # objects fetched (a ranged object counts once)
    requests: int = 0  # S3 GETs sent, ranges and retries included
    retries: int = 0  # transient failures retried
    bytes_fetched: int = 0
    deduplicated: int = 0  # references served by another side's fetch in the same ``resolve_sides`` call
    cache_hits: int = 0  # lookups served without fetching (cached, or joined another call's in-flight fetch)
    cache_misses: int = 0  # lookups that fetched and decoded
    cache_evictions: int = 0
    cache_bytes: int = 0  # held now
    cache_items: int = 0  # held now
    fetch_seconds: float = 0.0  # summed over threads
    decode_seconds: float = 0.0  # summed over threads


@dataclass(frozen=True)
class _Identified:
    """A built vision input and what it was built from (``rerankq.media.identity``; None when unknown)."""

    value: Any
    identity: str | None


@dataclass(frozen=True)
class _Item:
    """One vision entry of a side: what to build, its cache key, and a label for errors."""

    kind: str  # "image" | "video" | "frames"
    source: Any  # a reference, a PIL image, or a list of either (frames)
    key: Hashable
    label: str
    cacheable: bool


class MediaResolver:
    """Fetches and decodes the media of many sides at once, with a shared byte-bounded cache.

    ``resolve_sides`` returns, per side, a ``ResolvedSide`` or the ``MediaError`` that spoiled it (its message
    names the reference and the reason). A fetch that still failed transiently after the store's retries is
    reported as a ``MediaError`` too, with the ``TransientMediaError`` as its ``__cause__``.
    """

    def __init__(self, settings: Settings, preprocessor: Preprocessor | None, store: MediaStore | None = None) -> None:
        """``preprocessor`` None: the model reads no image or video (every medium is refused, unfetched)."""
        self.settings = settings
        self.pre: Preprocessor = preprocessor or _NoVision()
        self.store = store or MediaStore(settings)
        self.counters = self.store.counters
        self.cache: DecodedCache[_Identified] = DecodedCache(settings.media.cache_bytes, self.counters,
                                                             size_of=lambda item: self.pre.nbytes(item.value))
        self.identifies = settings.cache.active  # what each medium is, for the score cache (rerankq.media.identity)
        threads = settings.media.fetch_threads
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="rerankq-media")
        # Frames of a frame list are fetched on their own pool: a frame-list task waits for them, and waiting
        # on the pool it runs in could deadlock once every thread is such a task.
        self._frame_pool = ThreadPoolExecutor(threads, thread_name_prefix="rerankq-frames")

    def resolve_side(self, side: Side, budget: VisionBudget) -> ResolvedSide:
        """One side; raises ``MediaError`` when any of its media cannot be fetched or decoded."""
        result = self.resolve_sides([side], budget)[0]
        if isinstance(result, MediaError):
            raise result
        return result

    def identify(self, refs: Sequence[str]) -> dict[str, str | None]:
        """What each reference holds now, without fetching it (``MediaStore.identify``: S3 HEADs, concurrently;
        None where it cannot be told before a fetch)."""
        distinct = list(dict.fromkeys(refs))
        return dict(zip(distinct, self._pool.map(self.store.identify, distinct), strict=True))

    def resolve_sides(self, sides: Sequence[Side], budget: VisionBudget,
                      known: Mapping[str, str | None] | None = None) -> list[ResolvedSide | MediaError]:
        """Every side of a batch, in order; the distinct media of all of them fetched concurrently, once.

        ``known``: identities of references found just before (``identify``). The cache of decoded media is then
        keyed by them too, so an object overwritten since it was decoded is fetched again, not served stale."""
        futures: dict[Hashable, Future[Any]] = {}
        plans: list[list[_Item] | MediaError] = []
        known = known or {}
        for side in sides:
            try:
                plan = [self._item(v, "video", budget, known) for v in side.videos]
                plan += [self._item(i, "image", budget, known) for i in side.images]
            except MediaError as exc:
                plans.append(exc)
                continue
            plans.append(plan)
            for item in plan:
                if item.key in futures:
                    self.counters.add(deduplicated=1)
                else:
                    futures[item.key] = self._pool.submit(self._get, item, budget)
        return [plan if isinstance(plan, MediaError) else self._assemble(side.texts, plan, futures)
                for side, plan in zip(sides, plans, strict=True)]

    @property
    def stats(self) -> MediaStats:
        values = {k: v for k, v in self.counters.snapshot().items() if k in MediaStats.__dataclass_fields__}
        ints = {k: int(v) for k, v in values.items() if not k.endswith("_seconds")}
        return MediaStats(**{**values, **ints, "cache_bytes": self.cache.nbytes, "cache_items": len(self.cache)})

    def reset_stats(self) -> None:
        self.counters.reset()

    def close(self) -> None:
        """Stop the fetch threads and release the S3 connection pool."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._frame_pool.shutdown(wait=True, cancel_futures=True)
        self.store.close()

    def __enter__(self) -> MediaResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _assemble(self, texts: list[str], plan: list[_Item],
                  futures: dict[Hashable, Future[Any]]) -> ResolvedSide | MediaError:
        built: list[_Identified] = []
        for item in plan:
            try:
                built.append(futures[item.key].result())
            except MediaError as exc:
                return exc
        return ResolvedSide(texts=list(texts), vision=[b.value for b in built],
                            media=[tagged(item.kind, b.identity) for item, b in zip(plan, built, strict=True)])

    def _item(self, source: Any, kind: str, budget: VisionBudget, known: Mapping[str, str | None]) -> _Item:
        if isinstance(source, str | Image.Image):
            if kind == "video" and isinstance(source, Image.Image):
                raise MediaError("<PIL image>", "a video must be a reference or a list of frames, not one image")
            return self._single(source, kind, budget, known)
        if kind == "video" and isinstance(source, list | tuple):
            return self._frames(list(source), budget, known)
        raise MediaError(repr(source)[:80], f"an {kind} must be a reference string"
                         f"{' or a list of frames' if kind == 'video' else ' or a PIL image'}")

    def _single(self, source: str | Image.Image, kind: str, budget: VisionBudget,
                known: Mapping[str, str | None]) -> _Item:
        fields = ((budget.image_min_tokens, budget.image_max_tokens) if kind == "image"
                  else (budget.fps, budget.max_frames, budget.video_max_tokens))
        if isinstance(source, Image.Image):
            return _Item(kind, source, ("pil", id(source), *fields), "<PIL image>", cacheable=False)
        return _Item(kind, source, (kind, source, known.get(source), *fields), source, cacheable=True)

    def _frames(self, frames: list[Any], budget: VisionBudget, known: Mapping[str, str | None]) -> _Item:
        label = f"frame list [{frames[0] if frames and isinstance(frames[0], str) else '…'}, … {len(frames)} frames]"
        if not frames:
            raise MediaError("frame list []", "a frame list needs at least one frame")
        if len(frames) > self.settings.limits.max_frames_per_list:
            raise MediaError(label, f"{len(frames)} frames, over the limit {self.settings.limits.max_frames_per_list}"
                                    f" ({knob('limits.max_frames_per_list')})")
        if not all(isinstance(f, str | Image.Image) for f in frames):
            raise MediaError(label, "frames must be reference strings or PIL images")
        refs = tuple(f if isinstance(f, str) else ("pil", id(f)) for f in frames)
        cacheable = all(isinstance(f, str) for f in frames)
        ids = tuple(known.get(f) for f in frames if isinstance(f, str)) if known else ()
        return _Item("frames", frames, ("frames", refs, ids, budget.max_frames, budget.video_max_tokens), label,
                     cacheable)

    def _get(self, item: _Item, budget: VisionBudget) -> _Identified:
        """Build (or find in the cache) one vision input; every failure becomes a ``MediaError``."""
        try:
            if item.cacheable:
                return self.cache.get_or_compute(item.key, lambda: self._build(item, budget))
            return self._build(item, budget)
        except MediaError:
            raise
        except TransientMediaError as exc:
            raise MediaError(exc.ref, exc.reason) from exc
        except VisionError as exc:
            raise MediaError(item.label, str(exc)) from exc
        except Exception as exc:  # a decoder bug or odd file must not take the batch down
            log.exception("unexpected failure while reading %s", item.label)
            raise MediaError(item.label, f"could not be read ({type(exc).__name__}: {exc})") from exc

    def _build(self, item: _Item, budget: VisionBudget) -> _Identified:
        if isinstance(self.pre, _NoVision):  # checked before any fetch
            raise MediaError(item.label, "this model reads no images or videos (text only)")
        if item.kind == "frames":
            return self._build_frames(item.source, budget)
        if isinstance(item.source, Image.Image):
            return _Identified(self._timed(lambda: self.pre.image(self._pil(item.source), budget)), None)
        with self.store.open_identified(item.source, identify=self.identifies) as (source, identity):
            if item.kind == "image":
                image = self._timed(lambda: self._decode_image(source))
                return _Identified(self._timed(lambda: self.pre.image(image, budget)), identity)
            return _Identified(self._timed(lambda: self._video(source, budget)), identity)

    def _video(self, source: bytes | Any, budget: VisionBudget) -> Any:
        limits = self.settings.limits
        decoded = decode_video(source, budget.fps, budget.max_frames, limits.max_video_seconds,
                               frame_size=lambda n, h, w: self.pre.video_frame_size(n, h, w, budget),
                               max_pixels=limits.max_image_pixels)
        return self.pre.video(decoded.frames, decoded.indices, decoded.fps, budget)

    def _build_frames(self, frames: list[Any], budget: VisionBudget) -> _Identified:
        keep = sample_frame_list(len(frames), budget.max_frames)
        read = list(self._frame_pool.map(self._frame_image, [frames[i] for i in keep]))
        images = [image for image, _ in read]
        identity = frames_identity(len(frames), [ident for _, ident in read])
        return _Identified(self._timed(lambda: self.pre.frames(images, budget)), identity)

    def _frame_image(self, frame: str | Image.Image) -> tuple[Image.Image, str | None]:
        if isinstance(frame, Image.Image):
            return self._pil(frame), None
        try:
            with self.store.open_identified(frame, identify=self.identifies) as (source, identity):
                return self._timed(lambda: self._decode_image(source)), identity
        except VisionError as exc:  # name the frame, not the list
            raise MediaError(frame, str(exc)) from exc

    def _decode_image(self, source: Any) -> Image.Image:
        return decode_image(source, max_pixels=self.settings.limits.max_image_pixels,
                            exif_transpose=self.settings.media.exif_transpose)

    def _pil(self, image: Image.Image) -> Image.Image:
        """A caller's PIL image, preprocessed as a decoded reference would be (same orientation policy)."""
        return flatten(orient(image, self.settings.media.exif_transpose))

    def _timed(self, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return work()
        finally:
            self.counters.add(decode_seconds=time.perf_counter() - started)
