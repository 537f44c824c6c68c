"""The error tree, grouped by what the caller should do about it.

- ``PermanentError``: retrying will not help (bad input, missing object, refused host). A document that
  raises one gets a per-document error; a request that raises one fails as a whole.
- ``TransientError``: the same call may succeed later (timeouts, throttling, 5xx). Retried with backoff.

Third-party errors (botocore, redis, PIL, av) are translated into these at the boundary where they occur.
"""

from __future__ import annotations


class RerankqError(Exception):
    """Base of every error rerankq raises on purpose."""


class PermanentError(RerankqError):
    """Retrying will not help; the message says what to fix."""


class TransientError(RerankqError):
    """The same call may succeed later."""


class RetryLater(TransientError):
    """A job goes back to its queue after a transient failure, to be tried again in ``after_s`` seconds."""

    def __init__(self, message: str, after_s: float) -> None:
        super().__init__(message)
        self.after_s = after_s


class InvalidRequest(PermanentError):
    """The request breaks the job format or a limit. ``field`` names the offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message

    def at(self, prefix: str) -> InvalidRequest:
        """The same error under ``prefix``: ``[2]`` for the third job of a list gives ``[2].priority: ...``."""
        field = prefix if self.field in (None, "request") else f"{prefix}.{self.field}"
        return InvalidRequest(self.detail, field)


class RefError(RerankqError):
    """An error about one reference (a medium, an S3 object): ``ref`` and ``reason``, read as "ref: reason"."""

    def __init__(self, ref: str, reason: str) -> None:
        super().__init__(f"{ref}: {reason}")
        self.ref = ref
        self.reason = reason


class MediaError(RefError, PermanentError):
    """A media reference could not be fetched or decoded. The message names the reference and the reason."""


class TransientMediaError(RefError, TransientError):
    """A fetch failed in a way that may pass (timeout, throttling, 5xx, reset)."""


class NoSuchJob(PermanentError):
    """The job id is not known (never submitted, or its record expired)."""

    def __init__(self, job_id: str, what: str = "job") -> None:
        super().__init__(f"no such {what}: {job_id}")
        self.job_id = job_id


class JobFailed(RerankqError):
    """Raised by ``RerankClient.result`` when the job ended in ``failed`` or ``cancelled``."""

    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        super().__init__(f"job {job_id} {state}: {error or 'no detail'}")
        self.job_id = job_id
        self.state = state
        self.error = error


class CancelTooLate(PermanentError):
    """``RerankClient.cancel`` came too late: the job is ``finishing`` (its result is committed and being
    written) or has already ended (``succeeded``, ``failed``, ``expired``). ``state`` is that state; the job
    keeps it."""

    def __init__(self, job_id: str, state: str) -> None:
        what = "is finishing (its result is being written)" if state == "finishing" else f"already {state}"
        super().__init__(f"job {job_id} {what}: too late to cancel")
        self.job_id = job_id
        self.state = state


class ModelLoadError(PermanentError):
    """The model SPEC could not be resolved or loaded."""


class PairTooLong(MediaError):
    """A pair's special and vision tokens alone exceed the length budget (its text cannot be cut further): its
    media are too large to score. A ``MediaError``, so it fails its document like any other unreadable medium."""

    def __init__(self, reason: str) -> None:
        PermanentError.__init__(self, reason)  # the message is the reason alone: there is no reference to name
        self.ref, self.reason = "", reason


class CallbackRefused(PermanentError):
    """A callback URL that may not be called: its scheme, host or addresses break the callback policy
    (``callbacks.*`` settings). Refused at submit time where it can be told, and at every delivery."""


class SignatureError(PermanentError):
    """A callback's ``Rerankq-Signature`` header does not verify (``verify_signature``): the reason says why."""
