"""`wanops`: one command in front of the project's entry points.

    wanops generate …   the upstream-compatible generate command (wan_core.cli)
    wanops operator     the kopf operator (python -m wanops_operator), configured by WANOPS_* variables
    wanops runner       the runner pod's entrypoint (python -m runner), configured by its pod
    wanops cluster …    the local control plane (python -m localcluster up|down|status|env)
    wanops demo …       scripts/demo.sh from a checkout

Each subcommand is a thin delegation, imported only when chosen: the operator image has no torch,
so `wanops operator` must never import it, and `wanops --help` stays instant.
"""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEMO_SCRIPT = Path(__file__).resolve().parent / "scripts" / "demo.sh"


def _generate(argv: list[str]) -> int:
    from wan_core.cli import main

    return main(argv)


def _cluster(argv: list[str]) -> int:
    from localcluster.__main__ import main

    return main(argv)


#: Subcommands that parse their own flags (their --help is theirs).
DELEGATED: dict[str, Callable[[list[str]], int]] = {"generate": _generate, "cluster": _cluster}


def _operator(_: list[str]) -> int:
    # Run the module as `python -m` would, so the operator has exactly one start-up path.
    runpy.run_module("wanops_operator", run_name="__main__", alter_sys=True)
    return 0


def _runner(_: list[str]) -> int:
    from runner.main import main

    return main()


def _demo(extra: list[str]) -> int:
    if not DEMO_SCRIPT.is_file():
        print(
            f"wanops demo: {DEMO_SCRIPT} not found; the demo runs from a wanops checkout "
            "(git clone, then `wanops demo` in it)",
            file=sys.stderr,
        )
        return 1
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return subprocess.call(["bash", str(DEMO_SCRIPT), *extra])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wanops", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("generate", help="generate a video on this machine (see `wanops generate --help`)")
    sub.add_parser("cluster", help="the local control plane (see `wanops cluster --help`)")
    sub.add_parser(
        "operator",
        help="run the operator",
        description="Run the wanops operator (kopf). It takes no flags: every setting is a "
        "WANOPS_* environment variable (wanops_operator/config.py), which the Helm chart sets. "
        "Credentials: the pod's ServiceAccount in a cluster, else KUBECONFIG.",
    ).set_defaults(func=_operator)
    sub.add_parser(
        "runner",
        help="run the runner pod's entrypoint",
        description="The runner pod's entrypoint. It takes no flags: the operator's Job mounts "
        "its config file and sets its environment (wanspec/contract.py); exit codes follow the "
        "contract (invalid input is not retried).",
    ).set_defaults(func=_runner)
    sub.add_parser(
        "demo",
        help="run the demo script of a checkout",
        description="Run scripts/demo.sh; further arguments go to the script "
        "(after `--` for ones that look like this command's, e.g. `wanops demo -- --help`).",
    ).set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]](argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.func is not _demo:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(extra)


if __name__ == "__main__":
    sys.exit(main())
