"""Compile for a TPU topology, on this host, what launch/train.py and launch/sample.py would run.

    python launch/compile.py --config=configs/imagenet_dit.py --topology=v5p:2x2x1
    python launch/compile.py --config=configs/imagenet_dit.py --topology=v5p:2x2x1 \
        --num_slices=2 --config.mesh.fsdp=4 --out=dit_v5p8x2.json --save=dit_step.bin
    python launch/compile.py --config=configs/imagenet_dit.py --topology=v5e:1x1 \
        --find_max_batch --sample_batch=0           # the largest global batch one v5e chip fits
    python launch/compile.py --config=configs/imagenet_dit.py --topology=v5p:2x2x1 \
        --sample_batch=0 --compare_unrolled         # scanned and unrolled steps, one run

From shapes alone (nothing is initialized or allocated; no data, weights or TPU needed, only
libtpu: `pip install "jax[tpu]==<jax version>"`, Linux x86-64): the trainer's jitted step with
the config's mesh, FSDP, micro-batches and REPA's frozen encoder, and the sampler of the
config's `sample` section for one chunk of --sample_batch images (0: no sampler), compiled by
libtpu for --num_slices slices of --topology (several slices: a hybrid mesh, data parallel
across them). Prints per chip: argument, temporary, output and aliased bytes, the peak of
libtpu's own heap (what its out-of-memory check compares) against the chip's HBM and whether it
fits, XLA's FLOPs beside the model's analytic cost
(vdm_jax/nn/cost.py), the roofline bound of the step at the chip's bf16 peak and the compile
time, with the host's load average (see vdm_jax.pipelines.compile). --out writes every figure as
JSON; --save the serialized train-step executable. Override any config field with
`--config.<key>=<value>` as for launch/train.py.

Exit status 2 with one line `error: ...` for bad input: an unknown topology, libtpu missing, a
mesh that does not fit the topology, a batch the chips do not divide, a bad config value, an
--out or --save that cannot be written (checked first, before any compile).
"""

from __future__ import annotations

import sys

from absl import flags

from vdm_jax.cli import ConfigArgs, launch
from vdm_jax.io import check_writable, write_json
from vdm_jax.parallel import host

USAGE = ("python launch/compile.py --config=configs/<name>.py --topology=v5p:2x2x1 "
         "[--num_slices=N] [--config.<key>=VALUE] [--out=F.json] [--save=F]")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:2x2x1, v5e:2x4, v6e:4x4.")
_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices of --topology (DCN between them).")
_SAMPLE_BATCH = flags.DEFINE_integer("sample_batch", 256, "Images per sampling chunk "
                                     "(launch/sample.py --batch_size); 0 = no sampler.")
_OUT = flags.DEFINE_string("out", None, "Write every figure to this JSON file.")
_SAVE = flags.DEFINE_string("save", None, "Write the serialized train-step executable here.")
_COMPARE = flags.DEFINE_bool("compare_unrolled", False, "Also compile the train step with the "
                             "blocks unrolled (model.scan_layers=False), in the same run.")
_FIND_MAX = flags.DEFINE_bool("find_max_batch", False, "Bisect the largest global batch whose "
                              "train step fits one chip's HBM (--hbm_gib to override).")
_GRANULARITY = flags.DEFINE_integer("granularity", 8, "--find_max_batch tries global batches "
                                    "that are multiples of this × chips × micro-batches.")
_HBM = flags.DEFINE_float("hbm_gib", None, "HBM per chip for --find_max_batch (default: the "
                          "chip's).")
CONFIG = ConfigArgs(USAGE)


def main() -> None:
    if not CONFIG.path or not _TOPOLOGY.value:
        raise ValueError(f"--config=FILE and --topology=NAME are required. Usage: {USAGE}")
    for flag, value in (("--out", _OUT.value), ("--save", _SAVE.value)):
        if value:  # the outputs' places first: before minutes of compiling
            check_writable(value, flag)
    from vdm_jax import config as config_lib

    config = config_lib.load(CONFIG.path, CONFIG.overrides)  # then the (slower) imports
    import jax

    from vdm_jax.pipelines import compile as aot_compile

    # A persistent compilation cache could not load TPU executables on this host (no TPU
    # client), and the compile times measured here must be those of fresh compiles.
    jax.config.update("jax_enable_compilation_cache", False)

    if _FIND_MAX.value:
        hbm = None if _HBM.value is None else int(_HBM.value * 2**30)
        result = aot_compile.find_max_batch(
            config, _TOPOLOGY.value, hbm_bytes=hbm, num_slices=_SLICES.value,
            granularity=_GRANULARITY.value,
            on_try=_print_try)
        print(f"largest global batch that fits {result['hbm_bytes'] / 2**30:.1f} GiB per "
              f"chip: {result['max_batch']}")
    else:
        result = aot_compile.compile_programs(
            config, _TOPOLOGY.value, num_slices=_SLICES.value,
            sample_batch=_SAMPLE_BATCH.value or None, save=_SAVE.value,
            compare_unrolled=_COMPARE.value)
        print(aot_compile.format_report(result), flush=True)
    if _OUT.value:
        write_json(_OUT.value, {"argv": sys.argv, **result})


def _print_try(batch: int, t: dict) -> None:
    size = (f"refused by libtpu ({t['out_of_memory'][:200]})" if t["out_of_memory"]
            else "no memory figure" if t["peak_bytes"] is None
            else f"peak {t['peak_bytes'] / 2**30:.2f} GiB per chip ({t['peak_source']})")
    print(f"global batch {batch}: {size}, {'fits' if t['fits'] else 'does not fit'} "
          f"(compiled in {t['compile_s']:.1f} s)", flush=True)


if __name__ == "__main__":
    # Before JAX initializes: on a host without TPU chips, libtpu loads for the compiles only,
    # quietly and beside other JAX processes (vdm_jax.parallel.host).
    launch(main, CONFIG, __doc__, before=host.configure)
