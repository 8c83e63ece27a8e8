"""`python -m runner`: the pod entrypoint (see `runner.main`)."""

import sys

from runner.main import main

sys.exit(main())
