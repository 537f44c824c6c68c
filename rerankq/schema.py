"""Jobs on the wire (docs/USAGE.md, *The job*): validated at submit time, before anything is enqueued.

Two tasks: a rerank job (``RerankJob``: a query and documents → a score each; ``task`` left out or
``rerank``) and an embedding job (``EmbedJob``: ``"task": "embed"``, inputs → a vector each). Both carry the
queue's fields (``QueueFields``). ``parse_job(data, settings)`` returns one or raises ``InvalidRequest``
naming the field and, for a limit, the setting that sets it (``documents: 1200 documents, over the limit 1000
(limits.max_documents, RERANKQ_LIMITS__MAX_DOCUMENTS)``). Unknown fields are errors that list the allowed
ones. Shorthand as Cohere and vLLM callers write it: ``"query": "text"`` and ``"documents": ["a", "b"]`` are
text sides. What reaches the worker is ``job.wire()``: plain JSON, sides always objects, references only
(media bytes never travel through the broker).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from rerankq.callbacks import check_url
from rerankq.errors import CallbackRefused, InvalidRequest
from rerankq.settings import CallbackSettings, LimitSettings, Settings, get_settings, knob

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_SCHEMES = ("s3://", "https://", "file://")


def _within_chars(value: str | None, info: ValidationInfo) -> str | None:
    limit = _limits(info).max_text_chars
    if value is not None and len(value) > limit:
        raise ValueError(f"{len(value)} characters, over the limit {limit} ({knob('limits.max_text_chars')})")
    return value


def _limits(info: ValidationInfo) -> LimitSettings:
    context = info.context or {}
    return context.get("limits") or LimitSettings()


def _check_ref(ref: str, what: str) -> str:
    if not isinstance(ref, str) or not ref.startswith(_SCHEMES):
        raise ValueError(f"{what} reference {ref!r} must start with s3://, https:// or file://")
    if ref.startswith("s3://") and "/" not in ref[5:].strip("/"):
        raise ValueError(f"{what} reference {ref!r} must be s3://bucket/key")
    return ref


def _text_sides(data: dict[str, Any], field: str) -> dict[str, Any]:
    """``data[field]`` with each string made a text side (the shorthand of Cohere, vLLM and OpenAI callers)."""
    if isinstance(data.get(field), list):
        data[field] = [{"text": d} if isinstance(d, str) else d for d in data[field]]
    return data


def _within_count(value: list[Any], info: ValidationInfo, what: str) -> list[Any]:
    """Documents of a rerank job, or inputs of an embedding job: at most ``limits.max_documents``."""
    limit = _limits(info).max_documents
    if len(value) > limit:
        raise ValueError(f"{len(value)} {what}, over the limit {limit} ({knob('limits.max_documents')})")
    return value


class SideSpec(BaseModel):
    """The query or one document: any of ``text``, ``image`` (one reference or a list), ``video`` (one
    reference to a video file, or a list of image references read as frames). At least one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str | None = None
    image: str | list[str] | None = None
    video: str | list[str] | None = None

    @field_validator("text")
    @classmethod
    def _text_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _within_chars(value, info)

    @field_validator("image")
    @classmethod
    def _images(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        refs = [value] if isinstance(value, str) else value or []
        limit = _limits(info).max_images_per_side
        if len(refs) > limit:
            raise ValueError(f"{len(refs)} images, over the limit {limit} ({knob('limits.max_images_per_side')})")
        if isinstance(value, list) and not value:
            raise ValueError("an empty image list; leave the field out instead")
        for ref in refs:
            _check_ref(ref, "image")
        return value

    @field_validator("video")
    @classmethod
    def _video(cls, value: str | list[str] | None, info: ValidationInfo) -> str | list[str] | None:
        refs = [value] if isinstance(value, str) else value or []
        limit = _limits(info).max_frames_per_list
        if isinstance(value, list) and not value:
            raise ValueError("an empty frame list; leave the field out instead")
        if len(refs) > limit:
            raise ValueError(f"{len(refs)} frames, over the limit {limit} ({knob('limits.max_frames_per_list')})")
        for ref in refs:
            _check_ref(ref, "video")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> SideSpec:
        if self.text is None and self.image is None and self.video is None:
            raise ValueError("needs at least one of text, image, video")
        return self


class QueueFields(BaseModel):
    """What every job carries for the queue, whatever its task: its id, priority, where its result goes, which
    model serves it, its deadline, whether the cache may answer it and where its callback goes."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN)
    priority: Literal["high", "normal", "low"] = "normal"
    result_uri: str | None = None
    deadline_s: float | None = Field(None, gt=0)
    expires_at: float | None = None
    model: str | None = Field(None, min_length=1, max_length=256)
    cache: bool | None = Field(None, strict=True)  # None = true: answers may come from and go to the cache
    callback_url: str | None = None
    instruction: str | None = Field(None, min_length=1)
    fps: float | None = Field(None, gt=0, le=60)
    max_frames: int | None = Field(None, ge=2)

    @field_validator("expires_at", mode="before")
    @classmethod
    def _expires_at(cls, value: object) -> object:
        """Epoch seconds, or an ISO 8601 time with its zone (``2026-11-30T08:00:00Z``)."""
        if isinstance(value, str):
            from datetime import datetime

            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from None
            if parsed.tzinfo is None:
                raise ValueError(f"{value!r} needs a time zone (e.g. 2026-11-30T08:00:00Z)")
            return parsed.timestamp()
        return value

    @model_validator(mode="after")
    def _one_deadline(self) -> QueueFields:
        if self.deadline_s is not None and self.expires_at is not None:
            raise ValueError("give deadline_s or expires_at, not both")
        return self

    @field_validator("max_frames")
    @classmethod
    def _max_frames(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = _limits(info).max_frames
        if value is not None and value > limit:
            raise ValueError(f"{value} frames, over the limit {limit} ({knob('limits.max_frames')})")
        return value

    @field_validator("instruction")
    @classmethod
    def _instruction_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _within_chars(value, info)

    @field_validator("result_uri")
    @classmethod
    def _result_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^s3://[^/]+(/.*)?$", value):
            raise ValueError(f"{value!r} must be an s3://bucket/prefix/ URI")
        return value

    @field_validator("callback_url")
    @classmethod
    def _callback_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Static checks only (scheme, allow-list, literal addresses): the producer also resolves the host, and
        every delivery checks it again (DNS may change)."""
        if value is not None:
            policy = (info.context or {}).get("callbacks") or CallbackSettings()
            try:
                check_url(value, policy)
            except CallbackRefused as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def id(self) -> str:
        """The job id (set by the client or the worker before the job is enqueued or run)."""
        if self.job_id is None:
            raise ValueError("job has no job_id yet")
        return self.job_id

    def wire(self) -> dict[str, Any]:
        """The JSON the worker receives (``job_id`` set by the client)."""
        return self.model_dump(mode="json", exclude_none=True)


class Recall(BaseModel):
    """A rerank job's first stage: embed the query and the documents with ``model`` (an embedding model's
    SPEC), keep the ``top_k`` documents nearest the query, rerank only those."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    top_k: int = Field(ge=1)


class RerankJob(QueueFields):
    """A rerank job: the official ``process()`` input (instruction, query, documents, fps, max_frames) plus
    queue fields (job_id, priority, top_n, result_uri, model, deadlines, cache, callback_url). ``task`` is
    ``rerank`` or left out."""

    task: Literal["rerank"] | None = None
    query: SideSpec
    documents: list[SideSpec] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)
    max_tokens_per_doc: int | None = Field(None, ge=1)
    recall: Recall | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``"query": "text"`` and ``"documents": ["a", {"image": ...}]``: a string is a text side."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("query"), str):
            data["query"] = {"text": data["query"]}
        return _text_sides(data, "documents")

    @field_validator("documents")
    @classmethod
    def _document_count(cls, value: list[SideSpec], info: ValidationInfo) -> list[SideSpec]:
        return _within_count(value, info, "documents")

    @property
    def units(self) -> int:
        """What the model runs for this job: one pair per document."""
        return len(self.documents)


class EmbedJob(QueueFields):
    """An embedding job: ``inputs`` (each a text, images, a video, or a mix, as a rerank job's sides) → one
    L2-normalised vector each, with an optional ``instruction`` (the model's own when left out) and
    ``dimensions`` (Matryoshka: the first ``dimensions`` components, L2-normalised again)."""

    task: Literal["embed"]
    inputs: list[SideSpec] = Field(min_length=1)
    dimensions: int | None = Field(None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """``"inputs": ["a", {"image": ...}]``: a string is a text input."""
        return _text_sides(dict(data), "inputs") if isinstance(data, dict) else data

    @field_validator("inputs")
    @classmethod
    def _input_count(cls, value: list[SideSpec], info: ValidationInfo) -> list[SideSpec]:
        return _within_count(value, info, "inputs")

    @property
    def units(self) -> int:
        """What the model runs for this job: one pass row per input."""
        return len(self.inputs)


Job = RerankJob | EmbedJob
TASKS = ("rerank", "embed")


_SIDE_FIELDS = ", ".join(SideSpec.model_fields)
_OWN_FIELDS = {"rerank": ["instruction", "query", "documents", "fps", "max_frames", "top_n", "max_tokens_per_doc",
                           "recall", "task"],
               "embed": ["task", "inputs", "instruction", "dimensions", "encoding_format", "fps", "max_frames"]}
_FIELD_ORDER = {task: own + [f for f in QueueFields.model_fields if f not in own] for task, own in _OWN_FIELDS.items()}
_JOB_FIELDS = {task: ", ".join(order) for task, order in _FIELD_ORDER.items()}
_RECALL_FIELDS = ", ".join(Recall.model_fields)


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("str", "list[str]") or str(part).startswith("function-"):
            continue  # pydantic's union branch and validator names, not fields
        else:
            path += f".{part}" if path else str(part)
    return path or "request"


def _is_side(path: str) -> bool:
    """Whether ``path`` is the query, a document or an input (``query``, ``documents[3]``, ``inputs[0]``)."""
    return path == "query" or re.fullmatch(r"(documents|inputs)\[\d+\]", path) is not None


def _message(error: Any, path: str, task: str) -> str:
    """pydantic's message, in the job format's words: no class names, allowed fields listed."""
    if error["type"] == "extra_forbidden":
        parent = path.rpartition(".")[0]
        allowed = _SIDE_FIELDS if _is_side(parent) else _RECALL_FIELDS if parent == "recall" else _JOB_FIELDS[task]
        return f"unknown field (allowed: {allowed})"
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        if _is_side(path):
            return "expected a string, or an object with any of text, image, video"
        return "expected a JSON object"
    if error["type"] in ("string_type", "list_type") and path.endswith((".image", ".video")):
        return "expected a reference string or a list of them"
    return str(error["msg"]).removeprefix("Value error, ")


def parse_job(data: Any, settings: Settings | None = None) -> Job:
    """Validate one request (a dict, a ``RerankJob`` or an ``EmbedJob``) against the schema and
    ``settings.limits``. ``task`` picks the kind: ``rerank`` (the default) or ``embed``."""
    settings = settings or get_settings()
    if isinstance(data, QueueFields):
        data = data.model_dump(mode="json", exclude_none=True)
    if not isinstance(data, dict):
        raise InvalidRequest(f"a job is a JSON object, got {type(data).__name__}")
    task = data.get("task")
    if task is not None and task not in TASKS:
        raise InvalidRequest(f"{task!r} is not one of {', '.join(TASKS)}", "task")
    kind: type[RerankJob] | type[EmbedJob] = EmbedJob if task == "embed" else RerankJob
    try:
        return kind.model_validate(data, context={"limits": settings.limits, "callbacks": settings.callbacks})
    except ValidationError as exc:
        # One problem per field: a union (``image``: a string or a list) reports each of its branches.
        errors: dict[str, Any] = {}
        order = _FIELD_ORDER[task or "rerank"]
        # the task's own fields first (a bad document before a bad callback URL), as the allowed list reads
        ranked = sorted(exc.errors(), key=lambda e: order.index(e["loc"][0]) if e["loc"] and e["loc"][0] in order
                        else len(order))
        for error in ranked:
            errors.setdefault(_field_path(error["loc"]), error)
        path, first = next(iter(errors.items()))
        more = len(errors) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        raise InvalidRequest(_message(first, path, task or "rerank") + tail, path) from None
