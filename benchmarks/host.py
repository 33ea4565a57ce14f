"""A benchmark process's host settings: the trainer's own (vdm_jax.parallel.host.configure, the
one place they live), with the benchmark's --host_malloc and device-count overrides."""

from __future__ import annotations

import argparse

from vdm_jax.parallel import host


def setup_host(args: argparse.Namespace, cpu_devices: int | None = None) -> None:
    """Apply the trainer's host settings before JAX starts (call first in main). --host_malloc
    (None: the trainer's default) and `cpu_devices` (None: the trainer's default, 'auto' or
    $VDM_CPU_DEVICES) override them; what was applied goes to args.host for the report."""
    args.host = host.configure(malloc=getattr(args, "host_malloc", None),
                               cpu_devices=cpu_devices)
    args.host_malloc_applied = args.host["malloc_retained"]
