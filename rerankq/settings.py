"""Every knob of rerankq, in one place, with its unit, its default and what it does.

Settings come from ``RERANKQ_*`` environment variables (or arguments). The top-level names are a
public contract (deployments set them) and are read exactly as written (``RERANKQ_REDIS_URL``, ``RERANKQ_MODEL``, ...).
Sections use a double underscore: ``RERANKQ_BATCH__MAX_TOKENS=65536``, ``RERANKQ_LIMITS__MAX_DOCUMENTS=500``.

Nothing else in the project reads the environment: every component receives a ``Settings``. docs/CONFIG.md
lists every knob; it is generated from the fields below (``python -m rerankq.configdoc --write``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def comma_list(value: object, lower: bool = False) -> object:
    """A comma-separated environment value → its items, stripped (lower-cased for host names)."""
    if isinstance(value, str):
        return [(item.strip().lower() if lower else item.strip()) for item in value.split(",") if item.strip()]
    return value


# Weight quantization modes (``rerankq.models.quantization``); the setting ``quantization``.
QuantizationMode = Literal["none", "int8", "int4", "bnb-8bit", "bnb-nf4", "fp8"]
QUANTIZATION_MODES: tuple[str, ...] = get_args(QuantizationMode)


class BatchSettings(BaseModel):
    """How a worker packs pairs into forward passes."""

    max_tokens: int = Field(32768, ge=1, description="Padded tokens per forward pass (pairs x longest pair). "
                            "The main memory knob: activation memory grows linearly with it; larger = better GPU "
                            "utilisation until memory runs out. A pair longer than this still runs, alone.")
    max_pairs: int = Field(64, ge=1, description="Pairs per forward pass, whatever their length.")
    flush_interval_ms: float = Field(20.0, ge=0, description="How long (ms) a worker waits for more jobs before "
                                     "scoring what it has. Adds at most this much latency to a lone job.")
    max_jobs: int = Field(64, ge=1, description="Jobs a worker takes from the queue at once (its buffer).")
    prepare_threads: int = Field(4, ge=1, description="Threads that fetch, decode and tokenise pairs while the "
                                 "model runs the previous batch.")
    record_path: str = Field("", description="Append one JSON line per forward pass (job id and document index of "
                             "each pair) to this file; empty = off. `rerankq bench` replays these exact batches for "
                             "its scorer-alone figure.")


class ScoringSettings(BaseModel):
    """How the model runs."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weights and activations. auto = bfloat16 on CUDA, float32 on CPU.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="auto = flash_attention_2 when installed on CUDA, else sdpa.")
    max_length: int | None = Field(None, ge=16, description="Tokens per pair: longer document text is cut from its "
                                   "tail; a pair whose vision and special tokens alone exceed it is an error. Unset "
                                   "= the model's own default (its capabilities, shown by /v1/models).")
    model_cache_dir: str = Field("~/.cache/rerankq/models", description="Where s3:// checkpoints are downloaded.")
    seed: int = Field(0, description="Seed for random:2b / random:8b weights.")
    share_prefix: bool = Field(True, description="Run each job's common prefix (system prompt, instruction, "
                               "query with its images and videos) once and score every document against its keys "
                               "and values: scores unchanged, far less compute for long or visual queries. The "
                               "prefix's keys and values count against batch.max_tokens while held.")


class LimitSettings(BaseModel):
    """Bad-input guards: every limit on a job's size and its media. Each one is checked at submit time where it
    can be."""

    max_documents: int = Field(1000, ge=1, description="Documents per job.")
    max_text_chars: int = Field(100_000, ge=1, description="Characters per text field.")
    max_images_per_side: int = Field(16, ge=1, description="Images in one query or document.")
    max_frames_per_list: int = Field(512, ge=1, description="Image references in one frame-list video.")
    max_media_bytes: int = Field(256 * 2**20, ge=1, description="Bytes per media object (256 MiB).")
    max_image_pixels: int = Field(64_000_000, ge=1, description="Source pixels per image (decompression-bomb guard).")
    image_min_tokens: int | None = Field(None, ge=1, description="Visual tokens per image, lower bound. Unset = the "
                                         "model's own default.")
    image_max_tokens: int | None = Field(None, ge=4, description="Visual tokens per image, upper bound. Unset = the "
                                         "model's own default.")
    max_video_seconds: float = Field(3600.0, gt=0, description="Video duration (s).")
    max_frames: int = Field(64, ge=2, description="Frames sampled per video (official: 64).")
    video_max_tokens: int | None = Field(None, ge=128, description="Visual tokens per video, all frames. Unset = "
                                         "the model's own default.")


class ResultSettings(BaseModel):
    """Where results live and for how long."""

    ttl_s: int = Field(24 * 3600, ge=1, description="Seconds a succeeded job's record and result stay in Redis.")
    failure_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="Seconds a failed job's record stays (longer, "
                               "for post-mortems).")
    inline_max_bytes: int = Field(256 * 1024, ge=0, description="Results larger than this (bytes of JSON) go to "
                                  "S3 and Redis keeps the pointer.")
    bucket_uri: str = Field("s3://rerankq-results/", description="Where large results go when the job has no "
                            "result_uri.")


class MediaSettings(BaseModel):
    """How workers fetch media."""

    fetch_threads: int = Field(16, ge=1, description="Parallel fetches per worker; also the S3 connection pool.")
    cache_bytes: int = Field(512 * 2**20, ge=0, description="Per-worker cache of fetched and decoded media (bytes).")
    timeout_s: float = Field(30.0, gt=0, description="Per-request timeout for S3 and HTTPS (s).")
    retries: int = Field(3, ge=0, description="Retries of a transient failure (timeouts, 5xx, throttling).")
    retry_backoff_s: float = Field(0.2, ge=0, description="First retry delay (s); doubles each retry.")
    exif_transpose: bool = Field(False, description="Rotate JPEGs by their EXIF orientation tag. Off = the "
                                 "official preprocessing (qwen-vl-utils does not rotate); on changes scores.")
    job_retries: int = Field(3, ge=0, description="When a medium still fails transiently after ``retries``, the "
                             "job is retried this many times more (its other documents wait with it) before the "
                             "failure becomes a per-document error.")
    job_retry_backoff_s: float = Field(2.0, ge=0, description="Delay (s) before the first such job retry; "
                                       "doubles each time.")


class BatchJobSettings(BaseModel):
    """``RERANKQ_BATCHES__*``: JSONL batches (``rerankq batch``)."""

    max_in_flight: int = Field(1000, ge=1, description="Jobs of one batch queued or running at once; more keep the "
                               "queue deeper (throughput) but delay other work and hold more Redis memory.")
    part_lines: int = Field(10000, ge=1, description="Most lines per output part file.")
    part_interval_s: float = Field(10.0, gt=0, description="Finished lines are written out at least this often "
                                   "(s): how fresh the partial results of a running batch are.")
    retention_s: int = Field(86400, ge=60, description="How long (s) batch records and their jobs' records are "
                             "kept (Redis memory: about a result per line); the output files stay in S3.")
    chunk: int = Field(200, ge=1, description="Input lines read, validated and enqueued per round trip.")


class CacheSettings(BaseModel):
    """The score cache: a (model, preprocessing, query, document) content key → its score, in a Redis of its
    own, so a pair scored once is never run through the model again while its entry lives."""

    enabled: bool = Field(True, description="Look scores up in, and write them to, the score cache (only with "
                          "redis_url set). A job's \"cache\": false opts that job out.")
    redis_url: str = Field("", description="The cache's own Redis (redis://, rediss:// or unix://), never the "
                           "broker's: a worker refuses a URL that reaches the same server. Give it maxmemory and "
                           "maxmemory-policy allkeys-lru, so it stays bounded by evicting old scores. Empty = no "
                           "cache.")
    ttl_s: int = Field(30 * 24 * 3600, ge=1, description="Seconds a cached score lives (a hit does not extend it).")
    timeout_s: float = Field(0.5, gt=0, description="Socket timeout (s) of each cache command; past it the round "
                             "goes on without the cache.")
    retry_s: float = Field(30.0, ge=0, description="After a cache failure (its Redis down or slow), how long (s) "
                           "workers score without it before they try it again.")

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"RERANKQ_CACHE__REDIS_URL must start with redis://, rediss:// or unix://, got {value!r}")
        return value

    @property
    def active(self) -> bool:
        """Whether workers use the cache: enabled and given a Redis."""
        return self.enabled and bool(self.redis_url)


class GatewaySettings(BaseModel):
    """The HTTP gateway (``rerankq gateway``): compatible rerank endpoints, async jobs, uploads, the console."""

    uploads_uri: str = Field("s3://rerankq-uploads/", description="Where POST /v1/media and data: URIs store "
                             "files, under a content-hash key. Give the bucket a lifecycle rule (compose and k8s "
                             "expire uploads after 7 days).")
    max_upload_bytes: int = Field(64 * 2**20, ge=1, description="Bytes per uploaded file (64 MiB).")
    max_body_bytes: int = Field(32 * 2**20, ge=1024, description="Bytes per JSON request body (32 MiB), data: "
                                "URIs included.")
    max_queue_depth: int = Field(10_000, ge=1, description="Jobs waiting for a model above which new calls get "
                                 "429 with Retry-After.")
    retry_after_s: int = Field(5, ge=1, description="Retry-After (s) sent with a 429.")
    default_timeout_s: float = Field(60.0, gt=0, description="How long a synchronous rerank call waits for its "
                                     "job (s) before answering 504 with the job id; ?timeout= or the "
                                     "X-Rerankq-Timeout header override it.")
    max_timeout_s: float = Field(600.0, gt=0, description="The longest wait a call may ask for (s).")
    priority: Literal["high", "normal", "low"] = Field("high", description="Priority of synchronous calls "
                                                       "(async jobs keep their own).")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins browsers may call the gateway from (empty = "
        "same origin only; * = any).")
    allow_no_auth: bool = Field(False, description="Start on a non-loopback address without RERANKQ_API_KEYS "
                                "(refused otherwise).")
    recent_jobs: int = Field(50, ge=0, description="Jobs shown in the console's recent list.")

    _split_origins = field_validator("cors_origins", mode="before")(lambda value: comma_list(value))


class CallbackSettings(BaseModel):
    """Completion callbacks (a job's ``callback_url``): signing, allowed targets, retries."""

    secret: SecretStr = Field(SecretStr(""), description="HMAC-SHA256 key that signs every callback (the "
                              "Rerankq-Signature header). Deliverers send nothing while it is empty: events wait in "
                              "the outbox.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated hosts callbacks may go to (exact, *.domain, or * for "
        "any host with public addresses); empty = callbacks refused.")
    allow_http: bool = Field(False, description="Accept http:// callback URLs (tests, development); off = https:// "
                             "only.")
    allow_private: bool = Field(False, description="Let callbacks reach loopback, private and link-local "
                                "addresses (tests, development, receivers inside your network).")
    timeout_s: float = Field(10.0, gt=0, description="Per-request timeout of one delivery attempt (s).")
    max_attempts: int = Field(20, ge=1, description="Attempts per event before it is dropped (last error kept).")
    backoff_s: float = Field(1.0, ge=0, description="Delay (s) before the first retry; doubles each attempt, plus "
                             "up to 25 % jitter.")
    max_backoff_s: float = Field(3600.0, ge=0, description="Longest delay (s) between two attempts.")
    max_age_s: float = Field(24 * 3600.0, gt=0, description="An event still undelivered this long (s) after its "
                             "job ended is dropped at its next failure.")
    visibility_s: float = Field(60.0, gt=0, description="How long (s) a claimed event stays hidden from other "
                                "deliverers; a deliverer that dies mid-delivery gives it back after this.")
    concurrency: int = Field(4, ge=1, description="Deliveries in flight per deliverer (threads).")
    poll_interval_s: float = Field(0.5, gt=0, description="How often (s) an idle deliverer looks for due events.")
    deliver: bool = Field(True, description="Run a deliverer thread in every worker (off: run `python -m "
                          "rerankq.worker.callbacks` instead).")

    _split_hosts = field_validator("allowed_hosts", mode="before")(lambda value: comma_list(value, lower=True))


class Settings(BaseSettings):
    """rerankq's settings. Build with ``Settings()`` (environment) or ``Settings(redis_url=...)``."""

    model_config = SettingsConfigDict(env_prefix="RERANKQ_", env_nested_delimiter="__", extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Broker and job store: redis://, rediss:// "
                           "(TLS) or sentinel://host:26379;sentinel://host2:26379/0 (with redis_master_name); the "
                           "password in the URL.")
    redis_shards: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated Redis servers (each like redis_url; a sentinel:// URL "
        "keeps its ; between Sentinels) that share the deployment's jobs: each job lives on one, chosen from its id "
        "(rerankq.shards). Add new shards at the end of the list, never reorder or remove one. Empty = one Redis, "
        "redis_url.")
    shard: int | None = Field(None, ge=0, description="With redis_shards: the index (from 0) of this process's own "
                              "shard; its redis_url becomes that shard's URL. Required of workers, batchers and "
                              "Flower when there are several shards (rerankq worker --shard I); clients use "
                              "shard 0 for what is not a job's (batch lists, the gateway's recent jobs).")
    redis_master_name: str = Field("mymaster", description="With a sentinel:// URL: the name of the monitored "
                                   "primary.")
    redis_min_replicas: int = Field(0, ge=0, description="Replicas that must have a job's creation and its result "
                                    "before the call returns (Redis WAIT). 1 with Sentinel: an acknowledged submit "
                                    "survives a failover. 0 = do not wait.")
    redis_wait_ms: int = Field(2000, ge=1, description="How long (ms) to wait for those replicas; past it the call "
                               "fails as transient (the submit is not acknowledged, the result is retried).")
    redis_retry_s: float = Field(15.0, ge=0, description="How long (s) a Redis client keeps retrying a command "
                                 "through a dropped connection (restart, failover) before it gives up.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto); unset = AWS. Credentials "
                                        "come from the standard AWS chain.")
    model: str = Field("Qwen/Qwen3-VL-Reranker-2B", description="Model SPEC for workers: a directory, a Hugging "
                       "Face id, s3://bucket/prefix/, random:2b or random:8b.")
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")
    quantization: QuantizationMode = Field(
        "none", description="Weight quantization of the model's linear layers, applied at load: int8 / int4 "
        "(torchao weight-only), bnb-8bit / bnb-nf4 (bitsandbytes), fp8 (CUDA compute capability >= 9 only). "
        "These need the quant extra. none = the weights as they are; a pre-quantized checkpoint (FP8, NVFP4) "
        "loads as it comes. Results, metrics and /v1/models name it (\"NAME [int8]\"), and quantized scores "
        "never share cache entries with full-precision ones.")
    quantize_vision: bool = Field(False, description="Quantize the vision tower's linear layers too (with "
                                  "quantization); by default it stays in full precision.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Worker Prometheus port (0 = off).")
    allow_file_urls: bool = Field(False, description="Let workers read file:// references.")
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated hosts workers may fetch https:// media from.")
    instruction: str | None = Field(None, description="Instruction used when a job gives none. Unset = the "
                                    "model's own default (none for a model that takes no instruction).")
    queue_prefix: str = Field("rerankq", description="Prefix of every queue and Redis key (several deployments "
                              "can share one Redis).")
    lease_s: int = Field(30, ge=2, description="How soon (s) the jobs of a worker that died or stopped "
                         "responding return to their queue. Live workers renew their leases every lease_s/3, so a "
                         "long batch is never redelivered.")
    visibility_timeout_s: int | None = Field(None, ge=2, description="The old name of lease_s, still read: "
                                             "used when lease_s is not set.")
    max_deliveries: int = Field(3, ge=1, description="Times a job may kill the worker that runs it alone before "
                                "it ends failed (poison). Jobs that only shared a round with it are not charged.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer keys the HTTP gateway accepts (empty = no auth; "
        "then the gateway only starts on a loopback address).")

    batch: BatchSettings = Field(default_factory=BatchSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    results: ResultSettings = Field(default_factory=ResultSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    batches: BatchJobSettings = Field(default_factory=BatchJobSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)

    _split_hosts = field_validator("http_allowed_hosts", mode="before")(lambda value: comma_list(value, lower=True))
    _split_keys = field_validator("api_keys", mode="before")(lambda value: comma_list(value))
    _split_shards = field_validator("redis_shards", mode="before")(lambda value: comma_list(value))

    @model_validator(mode="after")
    def _old_lease_name(self) -> Settings:
        if self.visibility_timeout_s is not None and "lease_s" not in self.model_fields_set:
            self.lease_s = self.visibility_timeout_s
        return self

    @model_validator(mode="after")
    def _own_shard(self) -> Settings:
        """With shards, ``redis_url`` is this process's own shard's (``shard``, else the first)."""
        if not self.redis_shards:
            if self.shard is not None:
                raise ValueError(f"RERANKQ_SHARD={self.shard} needs RERANKQ_REDIS_SHARDS (the list it indexes)")
            return self
        for i, url in enumerate(self.redis_shards):
            if not url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
                raise ValueError(f"RERANKQ_REDIS_SHARDS item {i} must start with redis://, rediss://, unix:// or "
                                 f"sentinel://, got {url!r}")
        if len(set(self.redis_shards)) != len(self.redis_shards):
            raise ValueError("RERANKQ_REDIS_SHARDS lists the same Redis twice")
        if self.shard is not None and self.shard >= len(self.redis_shards):
            raise ValueError(f"RERANKQ_SHARD={self.shard} is out of range: RERANKQ_REDIS_SHARDS lists "
                             f"{len(self.redis_shards)} shards (0 to {len(self.redis_shards) - 1})")
        if "redis_url" in self.model_fields_set and self.shard is None:  # a process pointed at one shard by URL
            if self.redis_url not in self.redis_shards:
                raise ValueError("RERANKQ_REDIS_URL is not one of RERANKQ_REDIS_SHARDS: with shards, leave it "
                                 "unset and choose a process's own shard with RERANKQ_SHARD")
            self.shard = self.redis_shards.index(self.redis_url)
        self.redis_url = self.redis_shards[self.shard or 0]
        return self

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
            raise ValueError("RERANKQ_REDIS_URL must start with redis://, rediss://, unix:// or sentinel://, "
                             f"got {value!r}")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings from the environment (read once)."""
    return Settings()


def knob(path: str) -> str:
    """A setting named both ways, for messages: ``knob("limits.max_documents")`` →
    ``limits.max_documents, RERANKQ_LIMITS__MAX_DOCUMENTS``. Raises ``KeyError`` for a name that is no setting."""
    model: type[BaseModel] = Settings
    for part in path.split("."):
        annotation = model.model_fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return f"{path}, RERANKQ_{path.replace('.', '__').upper()}"
