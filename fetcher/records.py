"""Typed records passed between pipeline stages, and the fixed list of failure reasons."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    """Row outcome, as img2dataset names it (plus ``filtered``)."""

    SUCCESS = "success"
    FAILED_TO_DOWNLOAD = "failed_to_download"
    FAILED_TO_RESIZE = "failed_to_resize"
    FILTERED = "filtered"


class Reason(StrEnum):
    """Every failure a row can end with. Bounded on purpose: it is also a metric label."""

    # input
    MISSING_URL = "missing_url"
    INVALID_URL = "invalid_url"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    FILTERED = "filtered"
    BAD_KEY = "bad_key"
    MISSING_FILE = "missing_file"  # a local input's image is not in its tar/folder
    # network policy
    BLOCKED_ADDRESS = "blocked_address"
    ROBOTS_DISALLOWED = "robots_disallowed"
    # transport
    DNS_NXDOMAIN = "dns_nxdomain"  # the name does not exist
    DNS_NO_ADDRESS = "dns_no_address"  # the name exists without an A/AAAA record
    DNS_SERVFAIL = "dns_servfail"  # the resolver failed to answer (transient)
    DNS_TIMEOUT = "dns_timeout"  # no resolver answer in time (transient)
    DNS_REFUSED = "dns_refused"  # the resolver refused or could not be reached (transient)
    CONNECT_ERROR = "connect_error"
    CONNECTION_RESET = "connection_reset"
    TIMEOUT = "timeout"
    TLS_ERROR = "tls_error"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    REDIRECT_LOOP = "redirect_loop"
    BODY_TOO_LARGE = "body_too_large"
    TRUNCATED_BODY = "truncated_body"
    HTTP_PROTOCOL_ERROR = "http_protocol_error"  # not HTTP: bad status line, bad lengths, header floods
    HOST_UNAVAILABLE = "host_unavailable"
    TAIL_TIMEOUT = "tail_timeout"  # given up so the tar is not held open by a slow or dead host
    # HTTP status
    HTTP_403 = "http_403"
    HTTP_404 = "http_404"
    HTTP_408 = "http_408"
    HTTP_410 = "http_410"
    HTTP_429 = "http_429"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    HTTP_OTHER = "http_other"
    # image
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    DECODE_ERROR = "decode_error"
    TRUNCATED_IMAGE = "truncated_image"
    IMAGE_TOO_COMPLEX = "image_too_complex"
    DECOMPRESSION_BOMB = "decompression_bomb"
    IMAGE_TOO_SMALL = "image_too_small"
    IMAGE_TOO_LARGE = "image_too_large"
    ASPECT_RATIO = "aspect_ratio"
    HASH_MISMATCH = "hash_mismatch"
    ENCODE_ERROR = "encode_error"
    # run
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal_error"

    @property
    def facts(self) -> ReasonFacts:
        """What this failure means for the run (see REASON_FACTS)."""
        return REASON_FACTS.get(self, _PLAIN)

    @property
    def status(self) -> Status:
        """The img2dataset-style status column value for this reason."""
        if self is Reason.FILTERED:
            return Status.FILTERED
        return Status.FAILED_TO_RESIZE if self.facts.image else Status.FAILED_TO_DOWNLOAD


@dataclass(frozen=True)
class ReasonFacts:
    """What a failure reason means, in one place: adding a reason is its enum line plus its entry here.

    ``image``: the bytes came but are no usable image (status ``failed_to_resize``); ``retry``: transient,
    retried within the run (``--retries``); ``host_down``: the host itself did not answer, which feeds its
    breaker; ``redo``: a later ``--retry-failed`` run fetches the row again.
    """

    image: bool = False
    retry: bool = False
    host_down: bool = False
    redo: bool = False


_PLAIN = ReasonFacts()  # final: a row that failed so stays failed (404, refused URL, ...)
_IMAGE = ReasonFacts(image=True)
_TRANSIENT = ReasonFacts(retry=True, redo=True)
_DOWN = ReasonFacts(retry=True, redo=True, host_down=True)
_REDO = ReasonFacts(redo=True)  # not retried in the run (it ended it), worth a --retry-failed

REASON_FACTS: dict[Reason, ReasonFacts] = {
    Reason.BLOCKED_ADDRESS: _REDO,  # a rerun may widen the address policy; re-checking costs no request
    Reason.DNS_SERVFAIL: _DOWN,
    Reason.DNS_TIMEOUT: _DOWN,
    Reason.DNS_REFUSED: _TRANSIENT,
    Reason.CONNECT_ERROR: _DOWN,
    Reason.CONNECTION_RESET: _DOWN,
    Reason.TIMEOUT: _DOWN,
    Reason.TRUNCATED_BODY: _TRANSIENT,
    Reason.HOST_UNAVAILABLE: _REDO,  # its breaker gave the host up
    Reason.TAIL_TIMEOUT: _REDO,  # given up so its tar could be published
    Reason.HTTP_408: _TRANSIENT,
    Reason.HTTP_429: _TRANSIENT,
    Reason.HTTP_5XX: _TRANSIENT,
    Reason.NOT_AN_IMAGE: _IMAGE,
    Reason.UNSUPPORTED_FORMAT: _IMAGE,
    Reason.DECODE_ERROR: _IMAGE,
    Reason.TRUNCATED_IMAGE: _IMAGE,
    Reason.IMAGE_TOO_COMPLEX: _IMAGE,
    Reason.DECOMPRESSION_BOMB: _IMAGE,
    Reason.IMAGE_TOO_SMALL: _IMAGE,
    Reason.IMAGE_TOO_LARGE: _IMAGE,
    Reason.ASPECT_RATIO: _IMAGE,
    Reason.HASH_MISMATCH: _IMAGE,
    Reason.ENCODE_ERROR: _IMAGE,
    Reason.SHUTDOWN: _REDO,  # rows of a tar stopped mid-way
}


def reasons_where(**facts: bool) -> frozenset[Reason]:
    """The reasons whose facts match, e.g. ``reasons_where(retry=True)``."""
    return frozenset(r for r in Reason if all(getattr(r.facts, k) == v for k, v in facts.items()))


def reason_for_http_status(code: int) -> Reason:
    """Map a non-2xx HTTP status to its named reason."""
    named = {
        403: Reason.HTTP_403,
        404: Reason.HTTP_404,
        408: Reason.HTTP_408,
        410: Reason.HTTP_410,
        429: Reason.HTTP_429,
    }
    if code in named:
        return named[code]
    if 400 <= code < 500:
        return Reason.HTTP_4XX
    if 500 <= code < 600:
        return Reason.HTTP_5XX
    return Reason.HTTP_OTHER


@dataclass(frozen=True, slots=True)
class InputRow:
    """One input row, placed in its tar: tar ``tar_index``, position ``row_in_tar``."""

    tar_index: int
    row_in_tar: int
    key: str
    url: Any
    caption: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    expected_hash: str | None = None  # from the --verify-hash column
    # set by the reader for rows that are recorded but never fetched (--filter, bad --key-col value)
    skip_reason: Reason | None = None
    skip_detail: str = ""


@dataclass(slots=True)
class FetchOutcome:
    """What the HTTP stage produced for one attempt."""

    body: bytes | None = None
    reason: Reason | None = None
    detail: str = ""
    http_status: int | None = None
    retry_after: float | None = None
    fetch_ms: float = 0.0
    final_url: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None and self.body is not None


@dataclass(slots=True)
class ImageOutcome:
    """What the imaging stage produced. Plain data so it crosses process boundaries cheaply."""

    data: bytes | None = None
    ext: str = "jpg"
    width: int | None = None
    height: int | None = None
    original_width: int | None = None
    original_height: int | None = None
    source_format: str | None = None
    hash: str | None = None
    reason: Reason | None = None
    detail: str = ""
    cpu_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason is None and self.data is not None


@dataclass(slots=True)
class SampleResult:
    """The final record of one input row: one line of the per-tar results parquet."""

    row: InputRow
    status: Status
    reason: Reason | None = None
    detail: str = ""
    image: ImageOutcome | None = None
    http_status: int | None = None
    attempts: int = 0
    bytes_downloaded: int = 0
    bytes_written: int = 0
    fetch_ms: float = 0.0

    @classmethod
    def failure(cls, row: InputRow, reason: Reason, detail: str = "", **kw: Any) -> SampleResult:
        """A failed row with its named reason."""
        return cls(row=row, status=reason.status, reason=reason, detail=detail, **kw)
