"""A minimal stand-in for ``reranker.media.MediaResolver`` (issue 3), used only while that module is
missing: ``file://`` and ``s3://`` references, decoded with ``reranker.decode`` and ``reranker.vision``.
No cache, no https. Same contract: ``resolve_sides(sides, budget) -> list[ResolvedSide | MediaError]``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reranker.decode import decode_image, decode_video
from reranker.pipeline import ResolvedSide
from reranker.prompt import Side
from reranker.vision import VisionBudget, VisionError, VisionInput, frame_list_input, image_input, video_input
from rerankq.errors import MediaError
from rerankq.settings import Settings


class FallbackResolver:
    """Fetch + decode each side's media; concurrent over sides."""

    def __init__(self, settings: Settings) -> None:
        import boto3

        self.settings = settings
        self.s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
        self.pool = ThreadPoolExecutor(settings.media.fetch_threads, thread_name_prefix="media")

    def fetch(self, ref: str) -> bytes:
        from botocore.exceptions import ClientError

        if ref.startswith("file://"):
            if not self.settings.allow_file_urls:
                raise MediaError(ref, "file:// references are disabled (RERANKQ_ALLOW_FILE_URLS)")
            try:
                return Path(ref[len("file://"):]).read_bytes()
            except OSError as exc:
                raise MediaError(ref, str(exc)) from exc
        if ref.startswith("s3://"):
            bucket, _, key = ref[5:].partition("/")
            try:
                return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                raise MediaError(ref, "no such key" if code in ("NoSuchKey", "404") else str(exc)) from exc
        raise MediaError(ref, "unsupported reference scheme")

    def _image(self, ref: Any, budget: VisionBudget) -> VisionInput:
        try:
            return image_input(decode_image(self.fetch(ref), self.settings.limits.max_image_pixels), budget)
        except VisionError as exc:
            raise MediaError(ref, str(exc)) from exc

    def _video(self, ref: Any, budget: VisionBudget) -> VisionInput:
        try:
            if isinstance(ref, list):
                images = [decode_image(self.fetch(r), self.settings.limits.max_image_pixels) for r in ref]
                return frame_list_input(images, budget)
            video = decode_video(self.fetch(ref), budget.fps, budget.max_frames,
                                 self.settings.limits.max_video_seconds)
            return video_input(video.frames, video.indices, video.fps, budget)
        except VisionError as exc:
            raise MediaError(str(ref), str(exc)) from exc

    def resolve_side(self, side: Side, budget: VisionBudget) -> ResolvedSide:
        vision = [self._video(v, budget) for v in side.videos] + [self._image(i, budget) for i in side.images]
        return ResolvedSide(texts=list(side.texts), vision=vision)

    def resolve_sides(self, sides: list[Side], budget: VisionBudget) -> list[ResolvedSide | MediaError]:
        def one(side: Side) -> ResolvedSide | MediaError:
            try:
                return self.resolve_side(side, budget)
            except MediaError as exc:
                return exc

        return list(self.pool.map(one, sides))
