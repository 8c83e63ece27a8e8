"""The local S3 store: versitygw's posix backend serving a directory on loopback.

Credentials are generated per cluster so nothing depends on well-known defaults; the readiness check
makes a signed request, which proves both that the server answers and that the keys work.
"""

from __future__ import annotations

import secrets
import socket
import string
import urllib.parse
from dataclasses import dataclass

REGION = "us-east-1"


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
    """True when a signed ListBuckets succeeds (a plain connect first: minio retries refusals)."""
    url = urllib.parse.urlsplit(creds.endpoint)
    try:
        socket.create_connection((url.hostname, url.port), timeout=1).close()
    except OSError:
        return False
    try:
        client(creds).list_buckets()
    except Exception:  # noqa: BLE001 - connection refused, 5xx while starting: all mean "not yet"
        return False
    return True
