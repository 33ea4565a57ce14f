"""Import a released DiT / SiT / RAE stage-2 checkpoint as a run directory, or export a run to
their layout.

    python launch/import_checkpoint.py --format=dit --checkpoint=DiT-XL-2-256x256.pt \
        --workdir=runs/dit_xl2 --config.autoencoder.weights=/path/to/sd-vae-ft-ema
    python launch/import_checkpoint.py --format=sit --checkpoint=SiT-XL-2-256x256.pt \
        --workdir=runs/sit_xl2 --config.autoencoder.weights=/path/to/sd-vae-ft-ema
    python launch/import_checkpoint.py --format=rae_dit --checkpoint=stage2_model.pt \
        --workdir=runs/rae_ditdh_xl --config.data.latent_dir=RAE_LATENTS \
        --config.autoencoder.weights=RAE_DIR
    python launch/import_checkpoint.py --export=out.safetensors --format=dit --workdir=RUN

Import: the run's config is the format's recipe (configs/imagenet_dit.py, imagenet_sit.py or
imagenet_rae.py, or --config=FILE) with the network the file holds and the time and sign
conventions converted (vdm_jax.importers.dit, .rae_dit; rae_dit takes the DataSpec of the RAE
latent dataset --config.data.latent_dir); `--config.<key>=<value>` overrides as for training
(e.g. the sampling defaults). The file's EMA weights become the run's parameters and EMA at
step 0, so launch/sample.py and launch/evaluate.py use the run like any other (vdm_jax.pipelines
.import_checkpoint). Accepts the released EMA state dicts and train.py's {"model", "ema", "opt",
"args"} files (--weights=model for the raw weights); `.pt` needs torch, `.safetensors` not.
Export: --export=OUT writes the run's first EMA (--ema to choose) in the official layout
(`.safetensors`, or `.pt` with torch) for DiT's / SiT's PyTorch code. Bad input: one line
`error: ...`, exit 2, nothing written.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from vdm_jax import config as config_lib
from vdm_jax.cli import ConfigArgs, launch
from vdm_jax.io import check_writable
from vdm_jax.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
USAGE = ("python launch/import_checkpoint.py --format=dit|sit|rae_dit --checkpoint=FILE "
         "--workdir=DIR --config.autoencoder.weights=PATH  |  --export=OUT "
         "--format=dit|sit|rae_dit --workdir=DIR")
_FORMAT = flags.DEFINE_enum("format", None, ["dit", "sit", "rae_dit"],
                            "The checkpoint's code base (rae_dit: RAE's stage-2 DiT^DH).")
RECIPES = {"dit": "imagenet_dit", "sit": "imagenet_sit", "rae_dit": "imagenet_rae"}
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "The official checkpoint file to import.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory to create (import) or read.")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "model"], "train.py files: which weights.")
_HEADS = flags.DEFINE_integer("num_heads", None, "Attention heads, for a network that is not a "
                              "registry size (the weights do not store it).")
_EXPORT = flags.DEFINE_string("export", None, "Export the run to this official-layout file.")
_EMA = flags.DEFINE_string("ema", "", "Export: '' = the run's first EMA, 'none', or a decay.")
CONFIG = ConfigArgs(USAGE)  # --config and --config.<key>=<value>, split off before absl


def main() -> None:
    if not _FORMAT.value or not _WORKDIR.value:
        raise ValueError(f"--format and --workdir are required. Usage: {USAGE}")
    if _EXPORT.value:  # the output's place first, before reading any weights
        check_writable(_EXPORT.value, "--export")
    else:
        RunDir(_WORKDIR.value).check_writable()
    from vdm_jax.pipelines import import_checkpoint as pipeline

    if _EXPORT.value:
        out = pipeline.export_run(_WORKDIR.value, _EXPORT.value, format=_FORMAT.value,
                                  ema=_EMA.value)
        print(f"wrote {out}")
        return
    if not _CHECKPOINT.value:
        raise ValueError(f"--checkpoint=FILE is required to import. Usage: {USAGE}")
    recipe = CONFIG.path or str(ROOT / "configs" / f"{RECIPES[_FORMAT.value]}.py")
    config = config_lib.load(recipe, CONFIG.overrides)
    rundir = pipeline.import_run(_CHECKPOINT.value, config, _WORKDIR.value,
                                 format=_FORMAT.value, weights=_WEIGHTS.value,
                                 num_heads=_HEADS.value)
    print(f"imported {_CHECKPOINT.value} into {rundir.root}: sample it with "
          f"launch/sample.py --workdir={rundir.root}")


if __name__ == "__main__":
    launch(main, CONFIG, __doc__)
