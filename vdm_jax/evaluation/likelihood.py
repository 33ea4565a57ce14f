"""Likelihood on a held-out split: the model's −ELBO in bits/dim and the classical baselines.

    bits/dim = E_x[−ELBO(x)] / (D ln 2),  −ELBO = prior + reconstruction + diffusion (core.elbo)

estimated over every example of the split (padded rows masked out), `passes` times with fresh
(t, ε) draws (low-discrepancy t within a batch), and averaged. Baselines on the same K-level data:
    uniform:                  log2 K
    independent categorical:  per-pixel (and channel) histogram of the training split with
                              add-one smoothing, −E_test[log2 p_d(x_d)] averaged over dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax.checkpoints.restore import Restored
from vdm_jax.data import eval_iterator
from vdm_jax.data.pixels import unit_to_levels
from vdm_jax.model import DiffusionModel
from vdm_jax.parallel import mesh as mesh_lib


def evaluate_bpd(
    model: DiffusionModel,
    params: Any,
    data_config: Mapping[str, Any],
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh,
    seed: int = 0,
    passes: int = 1,
) -> dict[str, float]:
    """Mean −ELBO terms in bits/dim over the evaluation split: prior, reconstruction, diffusion,
    total; plus 'num_examples'."""
    sharding = mesh_lib.batch_sharding(mesh) if batch_size % mesh.size == 0 else None

    @jax.jit
    def batch_terms(params, image, label, mask, rng):
        terms = model.elbo_bpd(params, image, label, rng)
        return {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in terms.items()}

    sums: dict[str, float] = {}
    count = 0
    key = jax.random.key(seed)
    for p in range(passes):
        for i, batch in enumerate(eval_iterator(data_config, batch_size=batch_size,
                                                mesh_sharding=sharding)):
            rng = jax.random.fold_in(jax.random.fold_in(key, p), i)
            out = jax.device_get(batch_terms(
                params, batch["image"], batch["label"], batch["mask"], rng))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if p == 0:
                count += int(np.sum(jax.device_get(batch["mask"])))
    result = {k: v / (count * passes) for k, v in sums.items()}
    result["num_examples"] = count
    return result


def _levels(data_config: Mapping[str, Any], split: str, num_levels: int) -> np.ndarray:
    out = []
    for batch in eval_iterator(data_config, batch_size=512, process_index=0, process_count=1,
                               split=split):
        out.append(unit_to_levels(batch["image"][batch["mask"]], num_levels))
    return np.concatenate(out)


def pixel_baselines(data_config: Mapping[str, Any], num_levels: int) -> dict[str, float]:
    """{'uniform', 'independent_categorical'} in bits/dim on the evaluation split (see module)."""
    train = _levels(data_config, "train", num_levels)  # (N, H, W, C) int
    test = _levels(data_config, "eval", num_levels)
    counts = np.stack([(train == k).sum(0) for k in range(num_levels)], -1) + 1.0  # (H,W,C,K)
    log_p = np.log2(counts / counts.sum(-1, keepdims=True))
    idx = np.indices(test.shape[1:])
    nll = -log_p[idx[0], idx[1], idx[2], test]  # (N, H, W, C) bits
    return {"uniform": math.log2(num_levels), "independent_categorical": float(nll.mean())}


def bpd_metrics(
    restored: Restored, *, passes: int | None = None, batch_size: int | None = None, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, settings) of the held-out bits/dim of a restored run.

    metrics: "bpd" (−ELBO in bits/dim, mean over the evaluation split and `passes` draws of
    (t, ε)), its terms "bpd_prior", "bpd_reconstruction", "bpd_diffusion", "bpd_num_examples",
    and the baselines "bpd_baseline_independent_categorical", "bpd_baseline_uniform". passes and
    batch_size default to the run's config.eval.bpd_passes and config.eval.batch_size.
    settings: {"bpd": {the checkpoint, EMA, split, passes, batch size, seed}}.
    """
    config = restored.config
    passes = int(passes if passes is not None else config.eval.bpd_passes)
    batch_size = int(batch_size if batch_size is not None else config.eval.batch_size)
    if passes < 1 or batch_size < 1:
        raise ValueError(f"bpd passes and batch size must be positive, got {passes}, {batch_size}")
    model = restored.model
    bpd = evaluate_bpd(model, restored.params, config.data, batch_size=batch_size,
                                  mesh=restored.mesh, seed=seed, passes=passes)
    base = pixel_baselines(config.data, model.num_levels)
    metrics = {
        "bpd": bpd["total"], "bpd_prior": bpd["prior"],
        "bpd_reconstruction": bpd["reconstruction"], "bpd_diffusion": bpd["diffusion"],
        "bpd_num_examples": bpd["num_examples"],
        "bpd_baseline_independent_categorical": base["independent_categorical"],
        "bpd_baseline_uniform": base["uniform"],
    }
    settings = {"bpd": {
        "checkpoint_step": int(restored.step), "ema": restored.ema or "none",
        "dataset": config.data.name, "split": "eval", "num_levels": int(model.num_levels),
        "passes": passes, "batch_size": batch_size, "seed": seed,
    }}
    return metrics, settings
