"""What the runner reads before any model: its config, the run identity, the input image.

Each problem a user can fix becomes a fatal `RunnerError` whose message says what to fix: the
config the operator wrote (ConfigInvalid), an image that cannot be fetched or is not an image, or
is too large (ImageNotReadable). Only trouble that waiting can cure (a 5xx, a timeout) is
temporary.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import ssl
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from pydantic import ValidationError

from runner import errors
from runner.store import ObjectMissing, Store
from wanspec import contract

MAX_IMAGE_BYTES = 32 << 20  # a 4K PNG is ~25 MB; anything larger is not a conditioning frame
MAX_IMAGE_PIXELS = 64_000_000  # decoded size bound (decompression bombs); 8K × 8K
HTTP_TIMEOUT_S = 30.0
HTTP_ATTEMPTS = 3


def load_config(env: Mapping[str, str] = os.environ) -> contract.RunnerConfig:
    """The operator's `config.json` (path in $WANOPS_CONFIG, default /etc/wanops/config.json)."""
    path = env.get(contract.CONFIG_ENV, contract.CONFIG_PATH)
    try:
        return contract.RunnerConfig.model_validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError, ValidationError) as e:
        raise errors.bad_input(
            errors.CONFIG_INVALID,
            f"{path} is not a runner config ({e}); the operator and runner versions must match",
        ) from e


def run_identity(cfg: contract.RunnerConfig) -> str:
    """Same resource, spec, seed and layout → same id, whatever the attempt: a retried attempt
    recognises the video and the saved work of an earlier one; a recreated resource (new uid)
    or any change of what is generated does not."""
    what = {
        "uid": cfg.resource.uid,
        "seed": cfg.seed,
        "resolved": cfg.resolved.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def _too_large(source: str, limit: int) -> errors.RunnerError:
    return errors.bad_input(
        contract.IMAGE_NOT_READABLE,
        f"{source} is larger than {limit >> 20} MiB; use a JPEG or PNG of at most that size",
    )


def read_limited(stream: BinaryIO, limit: int, source: str) -> bytes:
    """At most `limit` bytes of `stream`; more is bad input (the user pointed at a huge file)."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _too_large(source, limit)
    return data


def check_image(data: bytes, source: str) -> Image.Image:
    """Decode fully (a truncated file fails here, not in the pipeline) within the pixel bound."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{image.width}x{image.height} pixels is more than {MAX_IMAGE_PIXELS}"
                )
            image.load()
        return image.convert("RGB")
    except (
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as e:
        raise errors.bad_input(
            contract.IMAGE_NOT_READABLE,
            f"{source} is not a readable image ({e}); spec.inputImage must point at a JPEG, PNG or "
            "WebP file",
        ) from e


def _https(url: str) -> bytes:
    for attempt in range(HTTP_ATTEMPTS):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "wanops-runner"})
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as resp:
                length = resp.headers.get("Content-Length")
                if length is not None and int(length) > MAX_IMAGE_BYTES:
                    raise _too_large(url, MAX_IMAGE_BYTES)  # before downloading any of it
                return read_limited(resp, MAX_IMAGE_BYTES, url)
        except urllib.error.HTTPError as e:
            if e.code < 500 and e.code != 429:
                raise errors.bad_input(
                    contract.IMAGE_NOT_READABLE,
                    f"{url} answered HTTP {e.code} {e.reason}; fix spec.inputImage or make the URL public",
                ) from e
            problem: Exception = e
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLCertVerificationError):  # no retry can make it trusted
                raise errors.bad_input(
                    contract.IMAGE_NOT_READABLE,
                    f"{url}: the server's TLS certificate is not trusted ({e.reason.verify_message}); "
                    "serve the image with a certificate from a public CA, or upload it to the store "
                    "and use s3://",
                ) from e
            problem = e
        except (TimeoutError, ConnectionError) as e:
            problem = e
        time.sleep(2.0**attempt)
    raise errors.temporary(errors.IMAGE_UNAVAILABLE, f"{url} could not be fetched: {problem}")


def fetch_image(uri: str, store: Store, dest: Path) -> Path:
    """spec.inputImage (`s3://` in the run's store, or `https://`) checked and saved as PNG at
    `dest`, which every rank of the pod then opens (as upstream, where every rank reads it)."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            data = store.read(bucket, key, limit=MAX_IMAGE_BYTES)
        except ObjectMissing as e:
            raise errors.bad_input(
                contract.IMAGE_NOT_READABLE, f"{e}; upload the image there or fix spec.inputImage"
            ) from e
        except ValueError as e:
            raise _too_large(uri, MAX_IMAGE_BYTES) from e
    elif uri.startswith("https://"):
        data = _https(uri)
    else:  # the CRD's pattern admits only these two; a hand-written config may not
        raise errors.bad_input(
            contract.IMAGE_NOT_READABLE, f"{uri}: only s3:// and https:// images are supported"
        )
    assert data is not None
    check_image(data, uri).save(dest, format="PNG")
    return dest
