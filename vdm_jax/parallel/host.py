"""Host settings of a JAX process, applied before JAX initializes: the one place they live.

    from vdm_jax.parallel import host
    host.configure()          # first thing in launch/train.py, launch/sample.py, benchmarks

`configure` applies four settings, each overridable (an explicit argument, else an environment
variable, else the default), and returns what it applied (benchmarks record it):

1. Memory retention (VDM_HOST_MALLOC = retain | default; default 'retain'). glibc malloc keeps
   freed memory in the process: one arena, no mmap for large blocks, no trimming (mallopt
   M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1, the same as MALLOC_ARENA_MAX=1
   MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge> in the environment). XLA:CPU allocates a
   step's temporary buffers (GBs for a DiT train step) afresh on every call; with glibc's
   defaults each is an mmap that is unmapped after the step, so every step page-faults them in
   again (seconds of kernel time per DiT-S/2 step on a 2-core host). The process keeps its peak
   memory; numerics are unaffected. Not glibc: nothing happens. Accelerators allocate device
   memory with their own allocator; there it only saves host-side churn.

2. Virtual CPU devices (VDM_CPU_DEVICES = auto | N; default 1). XLA:CPU runs a program's
   operations largely one after another, each spread over the cores; the small and
   memory-bound ones (attention of a few hundred tokens, layer norms, the optimizer) leave
   cores idle. N virtual devices (XLA's --xla_force_host_platform_device_count) split every
   batch N ways (the trainer's and the sampler's data parallelism, unchanged code) and run N
   programs at once, which keeps every core busy. 'auto' = one device per core this process may
   run on, at most MAX_AUTO_CPU_DEVICES (measured on 2 cores; see README "Performance"). Only
   the CPU backend reads it: GPU/TPU runs are unaffected. A global batch must then divide by
   the device count (the trainer says so). The default stays one device: data parallelism
   over virtual devices changes the reduction order (results are not bit-identical to a
   one-device run) and the batch constraint, so it is opt-in. Left alone when XLA_FLAGS
   already sets the flag or JAX_NUM_CPU_DEVICES is set.

3. XLA flags (XLA_FLAG_DEFAULTS, for every backend): each is appended to XLA_FLAGS unless
   XLA_FLAGS already names that flag (the user's value wins).

4. libtpu on a host without TPU chips (`tpu_settings`): installed (the test extra has it, to
   compile for TPU topologies ahead of time), libtpu makes every JAX process start a TPU
   backend, which prints errors about TPU_ACCELERATOR_TYPE / TPU_WORKER_HOSTNAMES and takes
   /tmp/libtpu_lockfile, so a second JAX process fails ("Internal error when accessing libtpu
   multi-process lockfile"). There, JAX_PLATFORMS excludes 'tpu' (cpu, plus cuda / rocm when
   their plugin is installed), and libtpu, when a process loads it to compile for a topology,
   may share the host with others (ALLOW_MULTIPLE_LIBTPU_LOAD=1) and is told it is one worker
   of one host (TPU_WORKER_HOSTNAMES, TPU_WORKER_ID, TPU_HOST_BOUNDS: it then queries nothing
   and prints nothing; the compiled topology is the one asked for). Each is set only where the
   environment does not set it. Hosts with TPU chips, or without libtpu, are left alone.

Call `configure` before anything initializes JAX's backends (jax.devices(), the first array):
XLA reads XLA_FLAGS once, and malloc settings should precede JAX's threads. A call after the
backends started changes nothing on the JAX side and says so (ValueError with strict=True).
Importing this module imports neither JAX nor anything that does.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

MALLOC_ENV = "VDM_HOST_MALLOC"
CPU_DEVICES_ENV = "VDM_CPU_DEVICES"
MALLOC_CHOICES = ("retain", "default")
MAX_AUTO_CPU_DEVICES = 8  # 'auto' = one device per core, at most this many
DEVICE_COUNT_FLAG = "xla_force_host_platform_device_count"

# name -> value, with why. Empty: no flag beyond XLA's defaults measured faster (README
# "Performance" lists what was tried).
XLA_FLAG_DEFAULTS: dict[str, str] = {}


def retain_freed_memory() -> bool:
    """mallopt(M_ARENA_MAX=1, M_MMAP_MAX=0, M_TRIM_THRESHOLD=-1): see the module docstring.
    Returns False where it cannot apply (not glibc)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's malloc.h
    return bool(mallopt(m_arena_max, 1) and mallopt(m_mmap_max, 0)
                and mallopt(m_trim_threshold, -1))


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _flag_value(flags: str, name: str) -> str | None:
    """The value of --name=value in an XLA_FLAGS string ('' for a bare --name), else None."""
    for f in flags.split():
        key, _, value = f.lstrip("-").partition("=")
        if key == name:
            return value
    return None


def _flag_set(flags: str, name: str) -> bool:
    return _flag_value(flags, name) is not None


def resolve_cpu_devices(value: int | str | None = None) -> int:
    """The virtual CPU device count of `value` (default: $VDM_CPU_DEVICES, else 1)."""
    raw = value if value is not None else os.environ.get(CPU_DEVICES_ENV, "1")
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return max(1, min(usable_cpus(), MAX_AUTO_CPU_DEVICES))
    try:
        n = int(raw)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"{CPU_DEVICES_ENV}={raw!r}: expected 'auto' or a positive integer "
                         "(the number of virtual CPU devices; 1 = one device)")
    return n


def resolve_malloc(value: str | None = None) -> str:
    """'retain' or 'default' (default: $VDM_HOST_MALLOC, else 'retain')."""
    raw = (value if value is not None else os.environ.get(MALLOC_ENV, "retain")).strip().lower()
    if raw not in MALLOC_CHOICES:
        raise ValueError(f"{MALLOC_ENV}={raw!r}: expected one of {MALLOC_CHOICES}")
    return raw


GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips are PCI devices of Google's vendor id
LIBTPU_QUIET_ENV = {
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "TPU_WORKER_ID": "0",
    "TPU_HOST_BOUNDS": "1,1,1",
    "TPU_STDERR_LOG_LEVEL": "3",
    "TPU_MIN_LOG_LEVEL": "3",
}


def has_tpu_chips() -> bool:
    """Whether this host has TPU chips (PCI devices of Google's vendor id, or /dev/accel*)."""
    import glob

    if glob.glob("/dev/accel*"):  # TPU v2-v4 VMs
        return True
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def tpu_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment variables of item 4 of the module docstring for this host (empty on a
    TPU host or without libtpu), less those `environ` (default os.environ) already sets."""
    env = os.environ if environ is None else environ
    if not _installed("libtpu") or has_tpu_chips():
        return {}
    platforms = ["cpu"]
    from importlib import metadata

    names = {(d.metadata["Name"] or "").lower().replace("_", "-")
             for d in metadata.distributions()}
    if any(n.startswith("jax-cuda") and n.endswith("plugin") for n in names):
        platforms.insert(0, "cuda")
    elif any(n.startswith("jax-rocm") and n.endswith("plugin") for n in names):
        platforms.insert(0, "rocm")
    wanted = {"JAX_PLATFORMS": ",".join(platforms), **LIBTPU_QUIET_ENV}
    return {k: v for k, v in wanted.items() if k not in env}


def backends_started() -> bool:
    """Whether JAX has initialized its backends (after which XLA_FLAGS are not read again)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # only when JAX is already imported

    return xla_bridge.backends_are_initialized()


def configure(
    *, malloc: str | None = None, cpu_devices: int | str | None = None,
    xla_flags: dict[str, str] | None = None, strict: bool = False,
) -> dict[str, Any]:
    """Apply the host settings (module docstring); arguments override the environment. An
    explicit `cpu_devices` is a minimum: it raises a smaller device count already in XLA_FLAGS
    and keeps a larger one (a benchmark then uses the first N devices).

    Returns {'malloc': requested mode, 'malloc_retained': applied, 'cpu_devices': the virtual
    CPU device count asked for (None when left to XLA_FLAGS / JAX_NUM_CPU_DEVICES),
    'xla_flags': XLA_FLAGS afterwards, 'late': True when JAX had already started, 'tpu_env':
    the libtpu settings set (item 4)}.
    """
    mode = resolve_malloc(malloc)
    devices = resolve_cpu_devices(cpu_devices)
    late = backends_started()
    if late and strict:
        raise ValueError("vdm_jax.parallel.host.configure() must run before JAX initializes "
                         "its backends (before jax.devices() or the first array)")
    retained = mode == "retain" and retain_freed_memory()
    flags = os.environ.get("XLA_FLAGS", "")
    if late:  # XLA has read its flags: changing them would only mislead child processes
        return {"malloc": mode, "malloc_retained": retained, "cpu_devices": None,
                "xla_flags": flags, "late": True, "tpu_env": {}}
    tpu_env = tpu_settings()
    os.environ.update(tpu_env)
    asked: int | None = None
    have = _flag_value(flags, DEVICE_COUNT_FLAG)
    if cpu_devices is not None and have is not None and (not have.isdigit() or int(have) < devices):
        # An explicit count is a minimum: raise a smaller one, keep a larger one.
        flags = " ".join(f for f in flags.split()
                         if f.lstrip("-").split("=")[0] != DEVICE_COUNT_FLAG)
        have = None
    if have is None and "JAX_NUM_CPU_DEVICES" not in os.environ:
        flags = f"{flags} --{DEVICE_COUNT_FLAG}={devices}"
        asked = devices
    for name, value in {**XLA_FLAG_DEFAULTS, **(xla_flags or {})}.items():
        if not _flag_set(flags, name):
            flags = f"{flags} --{name}={value}"
    os.environ["XLA_FLAGS"] = flags.strip()
    return {"malloc": mode, "malloc_retained": retained, "cpu_devices": asked,
            "xla_flags": os.environ["XLA_FLAGS"], "late": late, "tpu_env": tpu_env}
