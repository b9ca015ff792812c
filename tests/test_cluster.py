"""Job sizes on a cluster: threads capped at a node's CPUs, memory no node has refused."""

from __future__ import annotations

import pytest

from wsss import cluster
from wsss.errors import ConfigError


@pytest.fixture()
def sinfo(monkeypatch):
    """A fake cluster: partition cpu has nodes of 2 and 4 CPUs (8000 MB), gpu one of 16."""
    table = {("%c", "cpu"): 4, ("%c", "gpu"): 16, ("%c", None): 16,
             ("%m", "cpu"): 8000, ("%m", "gpu"): 64000, ("%m", None): 64000}
    monkeypatch.setattr(cluster, "_largest", lambda field, partition: table[(field, partition)])


def test_threads_are_capped_at_the_largest_node(sinfo):
    assert cluster.threads_for(8, "cpu") == 4
    assert cluster.threads_for(8, "gpu") == 8
    assert cluster.threads_for(32, None) == 16


def test_memory_no_node_has_is_refused_naming_the_key(sinfo):
    assert cluster.check_memory("resources.train_irn.mem_mb", 8000, "cpu") == 8000
    with pytest.raises(ConfigError, match=r"config key resources\.train_irn\.mem_mb: 9000 MB is "
                                          r"more than any node of partition cpu has \(8000 MB\)"):
        cluster.check_memory("resources.train_irn.mem_mb", 9000, "cpu")


def test_without_sinfo_the_settings_stand(monkeypatch):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    cluster._largest.cache_clear()
    assert cluster.threads_for(8, "cpu") == 8
    assert cluster.check_memory("k", 10**6, None) == 10**6
    cluster._largest.cache_clear()
