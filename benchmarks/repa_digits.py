"""REPA on the digits, on a CPU: the digits DiT (configs/digits_dit.py) trained with and without
REPA, same budget, seed, data order and noise; held-out bits/dim, digits-FID and class accuracy.

    .venv/bin/python -m benchmarks.repa_digits --workdir=workdirs/repa_digits \
        --out=results/repa_digits.json

The REPA target is a frozen digits CNN (vdm_jax.nn.encoders.digits): its 4×4 grid of 64-d conv
features is aligned token for token with the DiT's 4×4 patch tokens after block --depth, through
REPA's projector (3 Linears with SiLU, width --projector_dim), weight --weight. The target CNN is
trained here on the digits training split with seed --encoder_seed (1), so it is NOT the metric
network (the same recipe with the run's seed 0, trained by the end-of-run evaluation): the two
share architecture and training data, not weights. Both runs evaluate exactly as `make demo`
does (vdm_jax.pipelines.train): bits/dim on the 300 test digits (2 passes), 500 class-balanced
samples from the EMA with the config's sampler, their digits-FID against the test split and the
classifier's accuracy on them. Rerunning with the same --workdir reuses finished runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from configs import digits_dit
from vdm_jax.data import digits as digits_data
from vdm_jax.data.pixels import levels_to_unit
from vdm_jax.data.records import InMemorySource
from vdm_jax.data.tfds_utils import data_source
from vdm_jax.evaluation.digits_classifier import train_or_load_digits_classifier
from vdm_jax.io import write_npz
from vdm_jax.nn.encoders.digits import to_arrays
from vdm_jax.pipelines import train as pipeline

COLUMNS = [("run", "run"), ("steps", "steps"), ("bits/dim", "bpd"),
           ("digits-FID", "digits_fid"), ("FID floor", "digits_fid_floor"),
           ("class acc.", "class_accuracy"), ("final loss", "loss"),
           ("REPA 1−cos", "repa_loss"), ("wall min", "wall_min")]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="workdirs/repa_digits")
    p.add_argument("--steps", type=int, default=0, help="training steps (0: the config's)")
    p.add_argument("--depth", type=int, default=2, help="align the hidden state after block i")
    p.add_argument("--weight", type=float, default=0.5, help="λ of the REPA term")
    p.add_argument("--projector_dim", type=int, default=256)
    p.add_argument("--encoder_seed", type=int, default=1, help="seed of the target CNN")
    p.add_argument("--out", default=None, help="JSON results")
    return p.parse_args(argv)


def target_network(path: Path, seed: int) -> Path:
    """Trains (or loads) the digits CNN on the training split with `seed`; saves it to `path`."""
    source = InMemorySource(data_source(digits_data.load_builder(None), digits_data.TRAIN_SPLIT))
    images = levels_to_unit(source.images, digits_data.NUM_LEVELS)
    clf = train_or_load_digits_classifier(images, source.labels.astype(np.int64),
                                          path.parent / "cache", digits_data.NUM_CLASSES, seed)
    write_npz(path, to_arrays(clf.model))
    return path


def main(argv: list[str]) -> dict[str, Any]:
    args = parse(argv)
    root = Path(args.workdir)
    encoder = target_network(root / f"digits_cnn_seed{args.encoder_seed}.npz", args.encoder_seed)
    rows = []
    for name in ("without REPA", "with REPA"):
        c = digits_dit.get_config()
        if args.steps:
            c.train.num_steps = args.steps
        if name == "with REPA":
            c.repa.enabled = True
            c.repa.encoder = "digits"
            c.repa.encoder_path = str(encoder)
            c.repa.depth = args.depth
            c.repa.weight = args.weight
            c.repa.projector_dim = args.projector_dim
        start = time.perf_counter()
        summary = pipeline.run(c, root / ("repa" if c.repa.enabled else "baseline"))
        if "results" not in summary:  # stopped (SIGTERM, Ctrl-C) before the end-of-run metrics
            raise SystemExit(f"{name}: stopped at step {summary['step']}; rerun the same command "
                             "to resume it")
        res, metrics = summary["results"], summary["metrics"]
        (digits,) = [s["digits"] for s in res["samples"]]  # one sampler setting: one batch
        rows.append({
            "run": name, "steps": summary["step"], "bpd": res["bpd"]["total"],
            "digits_fid": digits["digits_fid"], "digits_fid_floor": digits["digits_fid_floor"],
            "class_accuracy": digits["class_accuracy"], "loss": metrics.get("loss"),
            "repa_loss": metrics.get("repa_loss"),
            "wall_min": (time.perf_counter() - start) / 60, "results": res,
        })
    return report.finish("repa_digits", __file__, argv, args, rows, COLUMNS, settings=vars(args))


if __name__ == "__main__":
    main(sys.argv[1:])
