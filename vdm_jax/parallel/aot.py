"""TPU chips as a compiler sees them, without a TPU: topologies, their published figures, and
what XLA reports of a compiled program.

    devices = topology_devices("v5p:2x2x1", num_slices=2)     # compile-only devices (libtpu)
    mesh = vdm_jax.parallel.mesh.make_mesh(-1, 4, devices)    # hybrid over the two slices
    compiled = jax.jit(fn, ...).lower(*shape_dtype_structs).compile()
    memory_stats(compiled), xla_flops(compiled)

With `libtpu` installed (`pip install "jax[tpu]==<jax version>"`, Linux x86-64), libtpu's PJRT
plugin describes any slice by name ('v5p:2x2x1', 'v5e:2x4', 'v6e:4x4', 'v4:2x2x2'), and
`jax.jit(...).lower(...).compile()` on a mesh of its devices gives the TPU executable with XLA's
memory analysis (per chip) and cost analysis (per chip; a loop's body is counted once, whatever
its trip count) — on a CPU host. v4 and v5p chips hold two TensorCores that JAX drives as one
device ('megacore'), as on a real v4 / v5p slice.

`CHIPS` holds each generation's HBM and bf16 dense peak, the public figures of Google Cloud's
TPU pages (cloud.google.com/tpu/docs/system-architecture-tpu-vm and the per-version pages
/tpu/docs/v4, /v5e, /v5p, /v6e):
    v4   32 GiB HBM2,   275 TFLOP/s bf16
    v5e  16 GiB HBM2,   197 TFLOP/s bf16
    v5p  95 GiB HBM2e,  459 TFLOP/s bf16
    v6e  32 GiB HBM,    918 TFLOP/s bf16 (Trillium)
The roofline bound of a program is its FLOPs per chip ÷ the chip's peak: no step can be faster.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

__all__ = ["CHIPS", "Chip", "libtpu_missing_message", "memory_stats", "parse_topology",
           "roofline_seconds", "tiled_bytes", "topology_devices", "xla_flops"]

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation: its name in topology strings, HBM bytes per chip, bf16 dense peak
    FLOP/s per chip, and libtpu's chip configuration ('megacore': two TensorCores, one device)."""

    name: str
    hbm_bytes: int
    bf16_flops: float
    chip_config: str = "default"


# Sources in the module docstring.
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 32 * GiB, 275e12, "megacore"),
    "v5e": Chip("v5e", 16 * GiB, 197e12),
    "v5p": Chip("v5p", 95 * GiB, 459e12, "megacore"),
    "v6e": Chip("v6e", 32 * GiB, 918e12),
}
HOST_BOUNDS = (2, 2, 1)  # libtpu's default chips per host
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
# 3D tori for v4 / v5p ("2x2x1"), 2D for v5e / v6e ("2x4").
_TOPOLOGY = re.compile(r"^([a-z0-9]+):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[Chip, tuple[int, ...]]:
    """'v5p:2x2x1' -> (CHIPS['v5p'], (2, 2, 1)); ValueError naming the accepted forms."""
    m = _TOPOLOGY.match(name.strip().lower())
    gen = ALIASES.get(m.group(1), m.group(1)) if m else None
    if m is None or gen not in CHIPS:
        raise ValueError(
            f"unknown TPU topology {name!r}: expected <generation>:<chips per axis>, the "
            f"generation one of {sorted(CHIPS)}, e.g. v5p:2x2x1 (v5p-8), v4:2x2x2, v5e:2x4, "
            "v6e:4x4")
    dims = tuple(int(v) for v in m.group(2).split("x"))
    want = 3 if gen in ("v4", "v5p") else 2
    if len(dims) != want or min(dims) < 1:
        example = "2x2x1" if want == 3 else "2x2"
        raise ValueError(f"TPU topology {name!r}: {gen} slices have {want} axes of chips, e.g. "
                         f"{gen}:{example}")
    return CHIPS[gen], dims


def libtpu_missing_message() -> str:
    import jax

    return ("compiling for a TPU topology needs libtpu, which is not installed: "
            f"pip install \"jax[tpu]=={jax.__version__}\" (Linux x86-64, ~700 MB)")


def topology_devices(name: str, num_slices: int = 1) -> list[Any]:
    """The compile-only devices of `num_slices` slices of topology `name` (slice-major; with two
    or more slices each has a `slice_index`). ValueError for an unknown name, a bad slice count
    or libtpu missing (naming the pip command)."""
    chip, _ = parse_topology(name)
    if not isinstance(num_slices, int) or num_slices < 1:
        raise ValueError(f"num_slices={num_slices!r} must be a positive int")
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(libtpu_missing_message())
    import jax
    from jax.experimental import topologies

    gen, dims = name.strip().lower().split(":")
    kwargs: dict[str, Any] = {"chip_config_name": chip.chip_config}
    shape = (*parse_topology(name)[1], 1)[:3]
    if any(d < h for d, h in zip(shape, HOST_BOUNDS, strict=True)):
        # A slice smaller than one host (v5e:1x1, v6e:2x1): libtpu's default host of 2x2x1
        # chips would not divide it.
        kwargs["chips_per_host_bounds"] = tuple(min(d, h) for d, h in
                                                zip(shape, HOST_BOUNDS, strict=True))
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    try:
        desc = topologies.get_topology_desc(
            topology_name=f"{ALIASES.get(gen, gen)}:{dims}", platform="tpu", **kwargs)
    except (jax.errors.JaxRuntimeError, RuntimeError) as e:
        text = " ".join(str(e).split())
        if "not installed" in text:
            raise ValueError(libtpu_missing_message()) from None
        raise ValueError(f"libtpu cannot describe TPU topology {name!r} ({num_slices} "
                         f"slice(s)): {text}") from None
    return list(desc.devices)


def memory_stats(compiled: Any) -> dict[str, int] | None:
    """Per-device sizes from `compiled.memory_analysis()` (None where the backend has none):
    argument, output, alias (outputs reusing donated inputs), temp, and peak_bytes =
    argument + output − alias + temp, everything XLA's buffer assignment holds at once at most;
    host_temp (bytes placed in host memory: remat offloading). reported_peak_bytes is the
    backend's own peak figure where it gives one (0 otherwise)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # some backends raise instead of returning None
        return None
    if m is None:
        return None
    out = {k: int(getattr(m, f"{k}_in_bytes", 0) or 0)
           for k in ("argument_size", "output_size", "alias_size", "temp_size",
                     "generated_code_size", "host_temp_size")}
    out["peak_bytes"] = (out["argument_size"] + out["output_size"] - out["alias_size"]
                         + out["temp_size"])
    out["reported_peak_bytes"] = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    return out


def xla_flops(compiled: Any) -> float | None:
    """FLOPs per device of one run of `compiled` by XLA's cost analysis (a loop's body counted
    once), or None where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return None if flops is None else float(flops)


def tiled_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of an array of `shape` in TPU HBM when its two minor dimensions are padded to whole
    tiles of (8 · 4/itemsize) × 128 elements (8×128 for 32-bit, 16×128 for 16-bit, 32×128 for
    8-bit data), a vector as one row: an upper bound of what XLA's layouts take."""
    rows, cols = (1, 1, *shape)[-2:]
    sub = 8 * max(1, 4 // itemsize)
    lead = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return lead * (-(-rows // sub) * sub) * (-(-cols // 128) * 128) * itemsize


def roofline_seconds(flops_per_chip: float, chip: Chip) -> float:
    """Lower bound of a program's time on `chip`: its FLOPs at the chip's bf16 peak."""
    return flops_per_chip / chip.bf16_flops
