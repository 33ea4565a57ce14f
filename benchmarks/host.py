"""Host settings of a benchmark process: virtual CPU devices and glibc malloc retention
(set before JAX starts its threads)."""

from __future__ import annotations

import argparse
import ctypes
import os


def ensure_host_devices(n: int) -> None:
    """Ask XLA for n virtual CPU devices. Takes effect only if JAX's backends are not yet
    initialized (call before anything touches jax.devices()); harmless on GPU/TPU."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def retain_host_memory() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the OS: one malloc
    arena, no mmap for large blocks, no trimming (mallopt M_ARENA_MAX=1, M_MMAP_MAX=0,
    M_TRIM_THRESHOLD=-1; the same as MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=<large> in the environment). XLA:CPU allocates a step's temporary
    buffers (GBs for a DiT train step) afresh on every call; by default glibc maps them with
    mmap and unmaps them after, so each step page-faults them in again (seconds of kernel time
    per DiT-S/2 step). Call before JAX starts its threads. Returns False where it cannot apply
    (not glibc). The process keeps its peak memory; numerics are unaffected."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc malloc.h
    ok = mallopt(m_arena_max, 1) and mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, -1)
    return bool(ok)


def setup_host(args: argparse.Namespace) -> None:
    """Apply --host_malloc (call first in main, before JAX creates its threads)."""
    args.host_malloc_applied = args.host_malloc == "retain" and retain_host_memory()
