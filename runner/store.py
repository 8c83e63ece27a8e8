"""The object store: atomic, idempotent output and the run's saved work, through the `minio` SDK.

The SDK speaks plain S3, so the same code serves MinIO, AWS S3, versitygw and the rest.

Atomic: the MP4 is uploaded under a temporary key of its own (unique per try, so two pods racing
never share one), then copied server-side to the final key and the temporary object removed. The
final key only ever holds a complete video: an upload cut off half-way leaves at most a stray
temporary object under `.wanops/`, never anything at the final key.

Idempotent: the final object carries the content's sha256 and the run identity in its user
metadata (`x-amz-meta-sha256`, `x-amz-meta-wanops-run`). A retried pod that finds the final key
with its own run identity reports it and generates nothing; an object of another run (a resource
deleted and created again under the same name) is replaced.

Work in progress (the final latent before the VAE decode, the sampling loop's state every
`checkpointEverySteps`) lives under `<dir of key>/.wanops/<name>-<run>/` and is deleted once the
video is published. A failed attempt keeps it there on purpose (its retry resumes from it); a run
that fails for good may leave it (a bucket lifecycle rule on `.wanops/` expires it), but never
anything under the final key. A temporary upload whose copy failed is removed at once if the store
allows, else with the rest of the work prefix at the run's next success. Plain PUTs suffice
there: S3 makes an object visible only when its PUT completed, and only this run reads them.

Every call is retried with exponential backoff on connection errors and 5xx answers, then fails
with a temporary `StoreUnavailable` (the operator retries the attempt); refused credentials and a
missing bucket are bad input at once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import posixpath
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import InvalidResponseError, S3Error, ServerError

from runner import errors
from wanspec import contract

log = logging.getLogger(__name__)

T = TypeVar("T")

META_SHA256 = "sha256"
META_RUN = "wanops-run"
_AMZ_META = "x-amz-meta-"
CONTENT_TYPE = "video/mp4"
# S3's refusals of a key pair, plus versitygw's answer to an unknown access key.
_AUTH_CODES = (
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "XAdminUserNotFound",
)
_MISSING_CODES = ("NoSuchKey", "NotFound", "ResourceNotFound")


class ObjectMissing(LookupError):
    """The object (or its bucket) does not exist; not retried."""


@dataclass(frozen=True)
class Published:
    """The video at its final key: what `status.output` reports."""

    uri: str
    sha256: str
    bytes: int


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Store:
    """One run's view of the bucket: the output keys of its `OutputObject` and its work prefix."""

    def __init__(
        self,
        output: contract.OutputObject,
        access_key: str,
        secret_key: str,
        *,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        timeout_s: float = 60.0,
    ) -> None:
        url = urllib.parse.urlsplit(output.endpoint)
        # No retries inside urllib3: `_call` owns the retry policy, so the bounds are ours alone.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(10.0, timeout_s), read=timeout_s),
            retries=urllib3.Retry(total=0, redirect=0, raise_on_status=False),
        )
        self.client = Minio(
            url.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=url.scheme == "https",
            region=output.region,
            http_client=http,
        )
        self.output = output
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s

    @classmethod
    def from_env(cls, output: contract.OutputObject, env: Mapping[str, str], **kw: float) -> Store:
        """Credentials from the Secret the operator maps into the pod's environment."""
        keys = [env.get(name, "") for name in contract.STORE_SECRET_KEYS]
        if not all(keys):
            missing = ", ".join(n for n, k in zip(contract.STORE_SECRET_KEYS, keys) if not k)
            raise errors.bad_input(
                contract.SECRET_INVALID,
                f"the object-store Secret lacks {missing}; add both keys to the Secret named in "
                "spec.output.credentialsSecretRef (or the chart's store Secret)",
            )
        return cls(output, keys[0], keys[1], **kw)  # type: ignore[arg-type]

    # -- names ----------------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        return f"s3://{self.output.bucket}/{key}"

    def work_prefix(self, run_id: str) -> str:
        """Where this run keeps its work in progress, beside (never under) the final key."""
        folder, name = posixpath.split(self.output.key)
        stem = name.removesuffix(".mp4")
        return posixpath.join(folder, ".wanops", f"{stem}-{run_id}") + "/"

    # -- calls with retries ---------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """fn() with backoff on transient errors; refusals that no retry can fix raise at once."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except S3Error as e:
                if e.code in _AUTH_CODES:
                    raise errors.bad_input(
                        contract.SECRET_INVALID,
                        f"the object store at {self.output.endpoint} refused the credentials "
                        f"({e.code}) while trying to {what}; check AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY in the store Secret and the bucket's policy",
                    ) from e
                if e.code == "NoSuchBucket":
                    raise errors.bad_input(
                        errors.OUTPUT_BUCKET_NOT_FOUND,
                        f"bucket {self.output.bucket!r} does not exist at {self.output.endpoint}; "
                        "create it or set spec.output.bucket",
                    ) from e
                if e.response is not None and e.response.status < 500:
                    raise
                problem: Exception = e
            except (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, OSError) as e:
                problem = e
            if attempt + 1 < self.attempts:
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                log.warning(
                    "store: %s failed (%s); retry %d in %.1f s", what, problem, attempt + 1, delay
                )
                time.sleep(delay)
        raise errors.temporary(
            errors.STORE_UNAVAILABLE,
            f"could not {what} at {self.output.endpoint} after {self.attempts} tries: {problem}",
        )

    def _stat(self, key: str):  # -> minio.datatypes.Object | None
        def stat():
            try:
                return self.client.stat_object(self.output.bucket, key)
            except S3Error as e:
                if e.code in _MISSING_CODES:
                    return None
                raise

        return self._call(f"read {self.uri(key)}", stat)

    # -- output ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Fail early (before loading any model) on refused credentials or a missing bucket."""
        # A signed listing, not HEAD: HEAD answers carry no error code to tell the causes apart.
        self._call(
            "list the bucket",
            lambda: next(
                iter(self.client.list_objects(self.output.bucket, prefix=self.output.key)), None
            ),
        )

    def finished(self, run_id: str) -> Published | None:
        """The final object if this run already published it (a retried pod stops here)."""
        obj = self._stat(self.output.key)
        if obj is None:
            return None
        meta = {k.lower(): v for k, v in (obj.metadata or {}).items()}
        sha = meta.get(_AMZ_META + META_SHA256)
        if meta.get(_AMZ_META + META_RUN) != run_id or not sha:
            return None
        return Published(self.uri(self.output.key), sha, int(obj.size))

    def publish(self, path: str | Path, run_id: str) -> Published:
        """Upload the MP4 under a temporary key, then make it appear whole at the final key."""
        sha, size = sha256_file(path), Path(path).stat().st_size
        tmp = f"{self.work_prefix(run_id)}upload-{uuid.uuid4().hex[:12]}.mp4"
        meta = {META_SHA256: sha, META_RUN: run_id}
        bucket, key = self.output.bucket, self.output.key
        try:
            self._call(
                f"upload {self.uri(tmp)}",
                lambda: self.client.fput_object(
                    bucket, tmp, str(path), CONTENT_TYPE, metadata=meta
                ),
            )
            # Server-side copy keeps the metadata (directive COPY): the final object is born
            # complete.
            self._call(
                f"publish {self.uri(key)}",
                lambda: self.client.copy_object(bucket, key, CopySource(bucket, tmp)),
            )
        except errors.RunnerError:
            self._discard(tmp)  # a part-written or orphaned temporary object
            raise
        self._discard(tmp)
        log.info("store: published %s (%d bytes, sha256 %s)", self.uri(key), size, sha)
        return Published(self.uri(key), sha, size)

    def _discard(self, key: str) -> None:
        """Remove a temporary object once, if the store lets us; what stays behind is swept by
        `clear_work` of the run's next success (it lives under the work prefix)."""
        try:
            self.client.remove_object(self.output.bucket, key)
        except (
            S3Error,
            ServerError,
            InvalidResponseError,
            urllib3.exceptions.HTTPError,
            OSError,
        ) as e:
            log.warning("store: %s left behind (%s); the next success removes it", key, e)

    def upload_log(self, path: str | Path) -> str:
        """The runner's log beside the video, so it outlives the pods."""
        key = self.output.log_key
        self._call(
            f"upload {self.uri(key)}",
            lambda: self.client.fput_object(
                self.output.bucket, key, str(path), "text/plain; charset=utf-8"
            ),
        )
        return self.uri(key)

    # -- work in progress -----------------------------------------------------------------------

    def put_work(self, run_id: str, name: str, data: bytes) -> None:
        key = self.work_prefix(run_id) + name
        self._call(
            f"save {self.uri(key)}",
            lambda: self.client.put_object(self.output.bucket, key, io.BytesIO(data), len(data)),
        )

    def get_work(self, run_id: str, name: str) -> bytes | None:
        key = self.work_prefix(run_id) + name
        return self.read(self.output.bucket, key, missing_ok=True)

    def discard_work(self, run_id: str) -> None:
        """`clear_work` once the video is out and reported: a store that fails now costs only
        stray work objects (the next success of the run removes them), not the finished run."""
        try:
            self.clear_work(run_id)
        except errors.RunnerError as e:
            log.warning("store: work objects of run %s not removed: %s", run_id, e)

    def clear_work(self, run_id: str) -> None:
        """Remove the run's work objects (and stray temporary uploads) once the video is out."""
        prefix = self.work_prefix(run_id)
        objects = self._call(
            f"list {self.uri(prefix)}",
            lambda: list(
                self.client.list_objects(self.output.bucket, prefix=prefix, recursive=True)
            ),
        )
        for obj in objects:
            name = obj.object_name
            self._call(
                f"remove {self.uri(name)}",
                lambda n=name: self.client.remove_object(self.output.bucket, n),
            )

    # -- inputs ---------------------------------------------------------------------------------

    def read(
        self, bucket: str, key: str, *, limit: int | None = None, missing_ok: bool = False
    ) -> bytes | None:
        """An object's bytes (at most `limit`, else ValueError); a missing object or bucket is
        None with `missing_ok`, else ObjectMissing."""

        def get() -> bytes | None:
            try:
                resp = self.client.get_object(bucket, key)
            except S3Error as e:
                if e.code in (*_MISSING_CODES, "NoSuchBucket"):
                    if missing_ok:
                        return None
                    raise ObjectMissing(f"s3://{bucket}/{key}: {e.code}") from e
                raise
            try:
                data = resp.read(None if limit is None else limit + 1)
            finally:
                resp.close()
                resp.release_conn()
            if limit is not None and len(data) > limit:
                raise ValueError(f"s3://{bucket}/{key} is larger than {limit} bytes")
            return data

        return self._call(f"read s3://{bucket}/{key}", get)
