"""Convert pytorch-fid's FID Inception weights to the Flax model's .npz (needs torch, once).

    python launch/convert_inception.py --pth=pt_inception-2015-12-05-6726825d.pth \
        --out=inception_fid.npz

The .pth comes from the pytorch-fid GitHub releases; the output is then passed to evaluation with
--inception_weights=OUT or $VDM_JAX_INCEPTION_WEIGHTS=OUT (no torch needed from then on).
Bad input (an absent or unreadable .pth, another network's weights, no torch, an unwritable
--out): one line `error: ...`, exit 2, nothing written.
"""

from __future__ import annotations

from absl import flags

from vdm_jax.cli import ConfigArgs, launch
from vdm_jax.importers.inception import PTH_FILENAME, convert_pth_to_npz
from vdm_jax.io import check_writable

USAGE = "python launch/convert_inception.py --pth=FILE.pth --out=FILE.npz"
_PTH = flags.DEFINE_string("pth", None, f"Path to {PTH_FILENAME}.")
_OUT = flags.DEFINE_string("out", None, "Output .npz of the Flax parameters.")
ARGS = ConfigArgs(USAGE, takes_config=False)


def main() -> None:
    if not _PTH.value or not _OUT.value:
        raise ValueError(f"--pth and --out are required. Usage: {USAGE}")
    if not _OUT.value.endswith(".npz"):
        raise ValueError(f"--out must end in .npz, got {_OUT.value!r}")
    check_writable(_OUT.value, "--out")
    out = convert_pth_to_npz(_PTH.value, _OUT.value)
    print(f"wrote {out}")


if __name__ == "__main__":
    launch(main, ARGS, __doc__)
