"""Multi-host start-up: `jax.distributed.initialize` when the run spans several processes.

Explicit flags (config.distributed.coordinator_address / num_processes / process_id) win; else
JAX's own detection handles Cloud TPU pod slices and SLURM (`jax.distributed.initialize()` with no
arguments reads their environment); on one machine with neither, nothing is done.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax


def initialize(cfg: Mapping[str, Any]) -> None:
    """Initialize jax.distributed if this process is one of several (see the module docstring)."""
    if cfg.get("coordinator_address"):
        missing = [k for k in ("num_processes", "process_id") if cfg.get(k) is None]
        if missing:
            raise ValueError(f"distributed.coordinator_address is set but {missing} are not.")
        jax.distributed.initialize(
            coordinator_address=cfg["coordinator_address"],
            num_processes=int(cfg["num_processes"]),
            process_id=int(cfg["process_id"]),
        )
    elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "localhost").count(",") > 0:
        jax.distributed.initialize()
