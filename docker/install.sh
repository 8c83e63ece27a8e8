#!/usr/bin/env bash
# Installs wanops for one image target into the Python environment of $PYTHON, then proves the
# result: the Dockerfile's build stages run it, and so does the test suite (into a throw-away venv),
# so an image and CI can never disagree about what "installed" means.
#
#   docker/install.sh operator   wanops[operator]; torch must NOT be importable afterwards
#   docker/install.sh runner     torch (from $TORCH_INDEX_URL) and wanops[runner];
#                                flash-attn too when WITH_FLASH_ATTN=1 (needs nvcc: devel base);
#                                FlashInfer with its FA3 kernels built ahead of time for Hopper
#                                when WITH_FLASHINFER=1 (needs nvcc, no GPU);
#                                FlashAttention-4 (wanops[flash4]) when WITH_FLASH4=1
#
# Environment: PYTHON (default python3), SRC (the wanops source tree, default: this script's
# checkout), TORCH_INDEX_URL (default: the PyTorch CUDA 12.8 wheels), PIP_NO_CACHE_DIR as usual.
set -euo pipefail

target=${1:?usage: docker/install.sh operator|runner}
PYTHON=${PYTHON:-python3}
SRC=${SRC:-$(cd "$(dirname "$0")/.." && pwd)}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cu128}
pip=("$PYTHON" -m pip install --disable-pip-version-check)

# The images run with PYTHONDONTWRITEBYTECODE=1 as a user who cannot write the venv, so a module
# without its .pyc here is compiled from source by every process that imports it: torch's
# Dynamo/Inductor stack alone is ≈ 9 s of each run's start on an H100 host (BENCHMARKS.md,
# "Bytecode"). pip compiles what it installs; this makes sure of it, and the checks below look
# for the bytecode of modules every process imports.
compile_bytecode() {
  "$PYTHON" -m compileall -q -j 0 "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null
}

case "$target" in
operator)
  "${pip[@]}" "${SRC}[operator]"
  compile_bytecode
  "$PYTHON" -B - <<'PY'  # -B: the check must not write the bytecode it looks for
import importlib.util, os, sys
import kopf, wanops_cli, wanops_operator.__main__  # noqa: F401  (handlers register on import)
if importlib.util.find_spec("torch") is not None:
    sys.exit("operator install: torch is installed, but the operator image must stay without it")
for module in (kopf, wanops_operator.__main__):
    if not os.path.exists(importlib.util.cache_from_source(module.__file__)):
        sys.exit(f"operator install: {module.__name__} has no compiled bytecode")
print("operator install: ok (wanops_operator imports, no torch, bytecode compiled)")
PY
  ;;
runner)
  # torch first, from the CUDA index, so the extra's `torch>=…` is already satisfied by a CUDA build.
  "${pip[@]}" --index-url "$TORCH_INDEX_URL" torch
  "${pip[@]}" "${SRC}[runner]"
  if [[ "${WITH_FLASH_ATTN:-0}" == 1 ]]; then
    "${pip[@]}" --no-build-isolation flash-attn
  fi
  if [[ "${WITH_FLASHINFER:-0}" == 1 ]]; then
    # Built here, where nvcc is, into FlashInfer's package: the runtime stage has no compiler.
    # Pinned to the release whose kernel-module interface wan_core calls directly (loaded by path,
    # without the package's 0.6 s import: wan_core/ops/flashinfer_attention.py).
    "${pip[@]}" "${SRC}[runner,flashinfer]" "flashinfer-python==0.7.2.post1"
    "$PYTHON" -m wan_core.ops.flashinfer_attention --dtype bfloat16 float16 --install
  fi
  if [[ "${WITH_FLASH4:-0}" == 1 ]]; then
    # Its kernels compile at first use on the GPU (no nvcc); the runner keeps them in its compile cache.
    "${pip[@]}" "${SRC}[runner,flash4]"
  fi
  compile_bytecode
  "$PYTHON" -B - <<'PY'  # -B: the check must not write the bytecode it looks for
import importlib.util, os, sys
import torch, torch._dynamo.symbolic_convert, torch._inductor.compile_fx, wanops_cli, runner.main, wan_core.cli  # noqa: F401
for module in (torch._dynamo.symbolic_convert, torch._inductor.compile_fx, runner.main, wan_core.cli):
    if not os.path.exists(importlib.util.cache_from_source(module.__file__)):
        sys.exit(f"runner install: {module.__name__} has no compiled bytecode")
print(f"runner install: ok (torch {torch.__version__}, CUDA {torch.version.cuda}, bytecode compiled)")
PY
  ;;
*)
  echo "docker/install.sh: unknown target '$target' (operator or runner)" >&2
  exit 2
  ;;
esac
