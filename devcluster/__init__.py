"""Canaria's local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
and kwok, built from their Go modules by build.sh and run as plain processes on 127.0.0.1.

CLI: `python -m devcluster up|down|status|env`.
Python: `Cluster.up(root)`, `.kubeconfig`, `.server`, `.down()`.
"""

from .cluster import Cluster, DevclusterError, status, stop
from .layout import Layout, Settings

__all__ = ["Cluster", "DevclusterError", "Layout", "Settings", "status", "stop"]
