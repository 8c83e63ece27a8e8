"""The local S3 store: versitygw's posix backend serving a directory on loopback.

Credentials are generated per cluster so nothing depends on well-known defaults.
"""

from __future__ import annotations

import secrets
import string
import urllib.parse
import urllib.request
from dataclasses import dataclass

REGION = "us-east-1"
HEALTH_PATH = "/health"


@dataclass(frozen=True)
class S3Credentials:
    """Endpoint URL and root keys of one S3 server."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION


def generate_keys() -> tuple[str, str]:
    """A random (access key, secret key) pair shaped like AWS keys (20 and 40 characters)."""
    upper = string.ascii_uppercase + string.digits
    access = "WANOPS" + "".join(secrets.choice(upper) for _ in range(14))
    secret = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(40))
    return access, secret


def client(creds: S3Credentials):  # -> minio.Minio; imported lazily, minio is a dev/runner extra
    """A ``minio.Minio`` client for ``creds``."""
    from minio import Minio

    url = urllib.parse.urlsplit(creds.endpoint)
    return Minio(url.netloc, access_key=creds.access_key, secret_key=creds.secret_key,
                 secure=url.scheme == "https", region=creds.region)


def answers(creds: S3Credentials) -> bool:
    """True when the server's health endpoint (``--health HEALTH_PATH``) answers 200.

    Deliberately not a signed call through minio: importing minio alone costs seconds on a busy
    2-core machine, on the start-up path of every test session. The S3 tests cover signing.
    """
    try:
        with urllib.request.urlopen(creds.endpoint + HEALTH_PATH, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False
