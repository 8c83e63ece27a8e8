"""The S3 store speaks real S3 (SigV4, multipart, presigned URLs) to the minio client we ship."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
from datetime import timedelta

import pytest

pytestmark = pytest.mark.cluster

MIB = 1024 * 1024


def test_multipart_put_get_and_presigned_url(s3, bucket: str) -> None:
    data = os.urandom(11 * MIB)  # 3 parts at the 5 MiB minimum part size
    result = s3.put_object(bucket, "videos/out.mp4", io.BytesIO(data), len(data), part_size=5 * MIB,
                           content_type="video/mp4")
    assert result.etag.endswith("-3"), f"expected a 3-part multipart ETag, got {result.etag}"

    response = s3.get_object(bucket, "videos/out.mp4")
    try:
        assert hashlib.sha256(response.read()).digest() == hashlib.sha256(data).digest()
    finally:
        response.close()
        response.release_conn()
    assert s3.stat_object(bucket, "videos/out.mp4").content_type == "video/mp4"

    url = s3.presigned_get_object(bucket, "videos/out.mp4", expires=timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=30) as fetched:
        assert fetched.read() == data
