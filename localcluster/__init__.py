"""A real local Kubernetes control plane and S3 store for tests and the demo (see cluster.py)."""

from .cluster import ClusterError, LocalCluster, wait_for

__all__ = ["ClusterError", "LocalCluster", "wait_for"]
