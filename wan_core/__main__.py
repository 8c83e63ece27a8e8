"""`python -m wan_core …`: the `generate` command (see `wan_core.cli`)."""

import sys

from wan_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
