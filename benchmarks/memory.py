"""Memory figures: XLA's compiled memory analysis of a program and the bytes each device holds."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.parallel.aot import memory_stats  # noqa: F401  (benchmarks use it from here)


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
