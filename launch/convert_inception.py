"""Convert pytorch-fid's FID Inception weights to the Flax model's .npz (needs torch, once).

    python launch/convert_inception.py --pth pt_inception-2015-12-05-6726825d.pth \
        --out inception_fid.npz

The .pth comes from the pytorch-fid GitHub releases; the output is then passed to evaluation with
--inception_weights=OUT or $VDM_JAX_INCEPTION_WEIGHTS=OUT (no torch needed from then on).
"""

from __future__ import annotations

import argparse

from vdm_jax.importers.inception import PTH_FILENAME, convert_pth_to_npz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pth", required=True, help=f"path to {PTH_FILENAME}")
    parser.add_argument("--out", required=True, help="output .npz of the Flax parameters")
    args = parser.parse_args()
    if not args.out.endswith(".npz"):
        parser.error(f"--out must end in .npz, got {args.out!r}")
    out = convert_pth_to_npz(args.pth, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
