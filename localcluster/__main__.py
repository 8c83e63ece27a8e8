"""``python -m localcluster up|down|status|env``: the local cluster from a shell.

``up`` returns once every component is ready and leaves them running detached; ``down`` stops them
from any process; ``env`` prints shell exports (``eval "$(python -m localcluster env)"``).
The state directory is ``--dir``, else ``$WANOPS_CLUSTER_DIR``, else ``~/.cache/wanops/cluster``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .cluster import ClusterError, LocalCluster
from .tools import ToolNotBuilt


def _up(args: argparse.Namespace) -> int:
    if LocalCluster.attach(args.dir) is not None:
        print(f"localcluster: already running in {LocalCluster(args.dir).state_dir}")
        return 0
    cluster = LocalCluster(args.dir, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                           node_cpu=args.cpu, node_memory=args.memory,
                           node_agent=False if args.no_node_agent else None,
                           timeout=args.timeout)
    cluster.start()
    agent = "on" if cluster.node_agent else "off (localcluster.nodeagent not importable)"
    print(f"localcluster: ready in {cluster.timings['total']:.1f} s; node agent {agent}")
    print(f"  KUBECONFIG={cluster.kubeconfig}\n  S3 {cluster.s3_endpoint}")
    if args.timing:
        for component, seconds in sorted(cluster.timings.items(), key=lambda kv: kv[1]):
            print(f"  {component:<24} ready at {seconds:6.2f} s")
    return 0


def _down(args: argparse.Namespace) -> int:
    LocalCluster(args.dir).stop()
    print("localcluster: stopped")
    return 0


def _status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.attach(args.dir)
    if cluster is None:
        print(f"localcluster: not running in {LocalCluster(args.dir).state_dir}")
        return 1
    print(f"localcluster: running in {cluster.state_dir}")
    print(f"  api server {cluster.api_server}\n  s3 {cluster.s3_endpoint}")
    return 0


def _env(args: argparse.Namespace) -> int:
    cluster = LocalCluster.attach(args.dir)
    if cluster is None:
        print("localcluster: not running; start it with: python -m localcluster up", file=sys.stderr)
        return 1
    for key, value in cluster.env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", help="state directory (default $WANOPS_CLUSTER_DIR)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the cluster and return once it is ready")
    up.add_argument("--nodes", type=int, default=2, help="nodes registered by the node agent")
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--cpu", help="CPU capacity per node (node agent default if unset)")
    up.add_argument("--memory", help="memory capacity per node, e.g. 64Gi")
    up.add_argument("--no-node-agent", action="store_true", help="control plane without nodes")
    up.add_argument("--timeout", type=float, default=60.0, help="seconds per component to get ready")
    up.add_argument("--timing", action="store_true", help="print seconds-to-ready per component")
    up.set_defaults(func=_up)
    for name, func, text in (("down", _down, "stop every component"),
                             ("status", _status, "exit 0 if running"),
                             ("env", _env, "print shell exports for KUBECONFIG and S3")):
        sub.add_parser(name, help=text).set_defaults(func=func)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ClusterError, ToolNotBuilt) as exc:
        print(f"localcluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
