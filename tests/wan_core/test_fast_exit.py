"""fast_exit ends the process with its status after flushing what was written, and skips the teardown."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import atexit, logging, sys
from wan_core.fast_exit import fast_exit
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
atexit.register(lambda: print("teardown ran", file=sys.stderr))
logging.getLogger("t").info("saved video.mp4")
sys.stdout.write("buffered line")  # a pipe: block-buffered, not yet written
fast_exit(3)
"""


def test_exit_status_flushed_output_and_no_teardown() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert done.stdout == "buffered line"
    assert "saved video.mp4" in done.stderr and "teardown ran" not in done.stderr
