"""Memory figures: XLA's compiled memory analysis of a program and the bytes each device holds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def memory_stats(compiled: Any) -> dict[str, int] | None:
    """Per-device sizes from `compiled.memory_analysis()` (None where the backend has none):
    argument, output, alias (outputs reusing donated inputs), temp, and peak_bytes =
    argument + output − alias + temp, everything XLA's buffer assignment holds at once at most.
    reported_peak_bytes is the backend's own peak figure where it gives one (0 otherwise)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends raise instead of returning None
        return None
    if m is None:
        return None
    out = {k: int(getattr(m, f"{k}_in_bytes", 0) or 0)
           for k in ("argument_size", "output_size", "alias_size", "temp_size",
                     "generated_code_size")}
    out["peak_bytes"] = (out["argument_size"] + out["output_size"] - out["alias_size"]
                         + out["temp_size"])
    out["reported_peak_bytes"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    return out


def shard_bytes(tree: Any) -> dict[str, int]:
    """Bytes of `tree`'s arrays held by each device: {device id: bytes} over addressable shards."""
    per: dict[str, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device.id)
            per[key] = per.get(key, 0) + int(shard.data.nbytes)
    return per


def tree_bytes(tree: Any) -> int:
    """Logical (unsharded) bytes of every array in `tree`."""
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))
