"""The behaviour graph and per-cluster baselines (docs/graph.md)."""

from heron.platform.graph.baseline import ANOMALY_KINDS, list_baselines, mark_expected, reset_learning, score
from heron.platform.graph.builder import GraphBuilder
from heron.platform.graph.keys import argv_shape, cluster_key, endpoint_key, fileclass, listen_key, package_key
from heron.platform.graph.query import find_cluster, list_nodes, neighbourhood

__all__ = [
    "ANOMALY_KINDS", "GraphBuilder", "argv_shape", "cluster_key", "endpoint_key", "fileclass", "find_cluster",
    "list_baselines", "list_nodes", "listen_key", "mark_expected", "neighbourhood", "package_key",
    "reset_learning", "score",
]
