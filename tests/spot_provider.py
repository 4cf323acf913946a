"""A node provider for Ray's autoscaler whose instances can be reclaimed, as a cloud reclaims spot instances.

It is Ray's fake multi-node provider (every "instance" a raylet with its own object store on this machine), plus
one thing: a test writes a node id into ``<spot_dir>/reclaim`` and, on the autoscaler's next look at its
instances, the provider terminates that instance itself (its raylet and workers die) and stops listing it, as
a cloud does after a preemption notice. The autoscaler is told nothing else; what it does next (notice the lost
capacity, launch a replacement for the work still pending) is its own. ``<spot_dir>/reclaimed`` records what was
terminated. Configured as ``provider: {type: external, module: spot_provider.SpotProvider, spot_dir: ...}``
with this folder on the autoscaler's ``PYTHONPATH``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class SpotProvider(FakeMultiNodeProvider):
    def __init__(self, provider_config, cluster_name):
        super().__init__(provider_config, cluster_name)
        self._spot_dir = Path(provider_config["spot_dir"])

    def _reclaim_requested(self) -> None:
        request = self._spot_dir / "reclaim"
        if not request.is_file():
            return
        node_id = request.read_text().strip()
        request.unlink()
        with self.lock:
            known = node_id in self._nodes and node_id != self._head_node_id
            if known:
                self.terminate_node(node_id)
        record = {"node_id": node_id, "terminated": known, "time": time.time()}
        with open(self._spot_dir / "reclaimed", "a") as f:
            f.write(json.dumps(record) + "\n")

    def non_terminated_nodes(self, tag_filters):
        self._reclaim_requested()
        return super().non_terminated_nodes(tag_filters)
