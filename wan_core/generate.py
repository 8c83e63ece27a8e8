"""`python -m wan_core.generate …`: the upstream-compatible `generate` command (see `wan_core.cli`)."""

from wan_core.cli import main
from wan_core.fast_exit import fast_exit

if __name__ == "__main__":
    fast_exit(main())
