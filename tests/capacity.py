"""A peer as pricing sees it, with healthy defaults: shared by the core's tests."""

from __future__ import annotations

from typing import Any

from swarmd.core.pricing import GiB, PeerCapacity


def peer(node_id: str, **kw: Any) -> PeerCapacity:
    """A healthy peer with 4 shell slots; ``rtt_s`` orders otherwise equal peers."""
    fields: dict[str, Any] = {
        "name": node_id,
        "alive": True,
        "draining": False,
        "on_battery": False,
        "battery_policy": "pause",
        "cores": 8,
        "load": 0.1,
        "ram_available": 16 * GiB,
        "gpus_vram_free": (),
        "gpus_vram_total": (),
        "slots_total": 4,
        "slots_busy": 0,
        "queue": 0,
        "rtt_s": 0.001,
        "cost_per_hour": 0.0,
        "models": (),
    }
    fields.update(kw)
    return PeerCapacity(node_id=node_id, **fields)
