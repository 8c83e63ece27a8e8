# syntax=docker/dockerfile:1
# wanops images, one file, two targets:
#   docker build --target operator -t wanops/operator .   slim Python, no torch (wanops[operator])
#   docker build --target runner   -t wanops/runner   .   CUDA runtime, torch, wanops[runner]
#        --build-arg WITH_FLASH_ATTN=1                     also flash-attn (compiled in the builder)
#        --build-arg WITH_FLASHINFER=0                     without FlashInfer's prebuilt FA3 kernels
#        --build-arg WITH_FLASH4=1                         also FlashAttention-4 (≈250 MB of CUDA 12 compiler
#                                                          libraries; measured on an H200, not yet in this image)
# Both install through docker/install.sh, which the test suite runs too, and end as a numeric
# non-root user with no compilers or package caches in the final stage.
#
# Bases are pinned by exact tag and digest. No registry is reachable where this file was written:
# the digests are the ones several public Dockerfiles pin for these same tags, not read from the
# registry here; check them with `docker buildx imagetools inspect <tag>` before a release.
ARG PYTHON_BASE=python:3.12.12-slim-bookworm@sha256:593bd06efe90efa80dc4eee3948be7c0fde4134606dd40d8dd8dbcade98e669c
ARG CUDA_DEVEL_BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04@sha256:24c8e3581ea6330038b0d374920721983312627f8adbfcf390bdb4b399d280ed
ARG CUDA_RUNTIME_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@sha256:ac55d124da4882b497f732d8dfd9a702d5447a5f29d08d56da6f64f0a1eb34bc

# ---- operator --------------------------------------------------------------------------------
FROM ${PYTHON_BASE} AS operator-build
ENV PIP_NO_CACHE_DIR=1 PYTHON=/opt/venv/bin/python
RUN python -m venv /opt/venv
COPY pyproject.toml README.md wanops_cli.py /src/
COPY wanspec /src/wanspec
COPY wan_core /src/wan_core
COPY localcluster /src/localcluster
COPY runner /src/runner
COPY wanops_operator /src/wanops_operator
COPY docker/install.sh /src/docker/install.sh
RUN SRC=/src /src/docker/install.sh operator

FROM ${PYTHON_BASE} AS operator
COPY --from=operator-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
# Probe (kopf liveness) and metrics ports; the chart sets both through WANOPS_* variables.
EXPOSE 8080 8000
ENTRYPOINT ["python", "-m", "wanops_operator"]

# ---- runner ----------------------------------------------------------------------------------
FROM ${CUDA_DEVEL_BASE} AS runner-build
ARG WITH_FLASH_ATTN=0
ARG WITH_FLASHINFER=1
ARG WITH_FLASH4=0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PYTHON=/opt/venv/bin/python DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04's own Python (3.12): the runtime stage installs the same package, so the venv's
# interpreter link stays valid after the copy. The pinned base fixes the release; the archive
# serves that release's current security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md wanops_cli.py /src/
COPY wanspec /src/wanspec
COPY wan_core /src/wan_core
COPY localcluster /src/localcluster
COPY runner /src/runner
COPY wanops_operator /src/wanops_operator
COPY docker/install.sh /src/docker/install.sh
RUN SRC=/src WITH_FLASH_ATTN=${WITH_FLASH_ATTN} WITH_FLASHINFER=${WITH_FLASHINFER} WITH_FLASH4=${WITH_FLASH4} TORCH_INDEX_URL=${TORCH_INDEX_URL} \
    /src/docker/install.sh runner

FROM ${CUDA_RUNTIME_BASE} AS runner
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=runner-build /opt/venv /opt/venv
# HOME: uid 65532 has none, and libraries keep caches under it (FlashInfer makes its cache dir at
# import); /tmp is writable here, and the operator's pods set the same over an emptyDir.
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "runner"]
