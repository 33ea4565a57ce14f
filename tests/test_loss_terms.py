"""The loss-term protocol is real: a term defined here, in the test only (no file of the package
knows it), with trained params of its own, a non-trained input and a metric, registered by name,
is summed into the model's loss and trained by the unchanged trainer."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.model import terms
from vdm_jax.training import loop as trainer

WEIGHT, OFFSET = 0.25, 0.3


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class MeanMatch(terms.LossTerm):
    """ℓ(b) = (mean over pixels of pred_b − s · c)²: s a trained scalar (params["mean_match"]),
    c a fixed input (term_inputs["mean_match"]), weight λ = WEIGHT."""

    name: ClassVar[str] = "mean_match"

    @classmethod
    def build(cls, config, data, denoiser, seed):
        return cls(weight=WEIGHT), {"scale": jnp.ones(())}, {"scale": PartitionSpec()}

    @classmethod
    def load_inputs(cls, config):
        return {"offset": np.float32(OFFSET)}

    def input_specs(self, inputs):
        return {"offset": PartitionSpec()}

    def loss(self, params, inputs, forward, batch):
        mean = forward.pred.mean(axis=(1, 2, 3))  # (B,)
        value = (mean - params["scale"] * inputs["offset"]) ** 2  # (B,)
        return value, {"mean_match_loss": value.mean()}


@pytest.fixture
def registered():
    terms.register(MeanMatch)
    yield
    del terms.TERMS[MeanMatch.name]


def config(**train):
    c = config_lib.default_config()
    c.data.name = "digits"
    c.model.spec = dict(family="dit", depth=1, hidden_size=32, num_heads=2, patch_size=2)
    c.optim.lr = 1e-3
    c.optim.ema_decays = (0.9,)
    c.optim.warmup_steps = 0
    c.train.update(num_steps=2, global_batch_size=8, log_every=1, checkpoint_every=2,
                   async_checkpoints=False)
    c.sample.every = 0
    c.eval.at_end = False
    c.train.update(train)
    return c


def batch_of(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.uniform(-1, 1, (n, 8, 8, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, (n,)), jnp.int32)}


def test_a_registered_term_adds_its_weighted_loss_on_the_same_forward_pass(registered):
    """loss with the term = loss without it + λ · mean_b ℓ(b), ℓ evaluated here in float64 on the
    same draws (the prediction comes from the model's own forward pass, t and ε as the loss's)."""
    data = dm.DataSpec((8, 8, 1), 10, 17)
    model, params = dm.build(config(), data, 0)
    assert [t.name for t in model.terms] == ["mean_match"]
    assert float(params["mean_match"]["scale"]) == 1.0
    batch, rng = batch_of(), jax.random.key(3)
    inputs = dm.load_term_inputs(config())
    loss, aux = jax.jit(model.loss, static_argnums=3)(params, batch, rng, 10, inputs)
    plain = dataclasses.replace(model, terms=())
    base, base_aux = jax.jit(plain.loss)({"denoiser": params["denoiser"]}, batch, rng)
    np.testing.assert_array_equal(aux["t"], base_aux["t"])  # the same draws
    assert set(aux["terms"]) == {"mean_match_loss"} and base_aux["terms"] == {}
    # ℓ independently: the model's prediction at the loss's (t, z), reduced in float64 here.
    _, _, z = _draws(model, params, batch, rng)
    labels = _dropped_labels(model, batch, rng)
    pred = np.asarray(model.predict(params, z, aux["t"], labels), np.float64)
    ell = (pred.mean(axis=(1, 2, 3)) - OFFSET) ** 2
    np.testing.assert_allclose(float(aux["terms"]["mean_match_loss"]), ell.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(loss), float(base) + WEIGHT * ell.mean(), rtol=1e-5)


def _dropped_labels(model, batch, rng):
    from vdm_jax.nn.layers import label_dropout

    rng_drop, _ = jax.random.split(rng)
    return label_dropout(rng_drop, batch["label"], model.label_dropout, model.num_classes)


def _draws(model, params, batch, rng):
    from vdm_jax.core import objectives

    _, rng_loss = jax.random.split(rng)
    return objectives.noisy_inputs(model.objective, model.schedule(params), batch["image"],
                                   rng_loss)


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_the_trainer_trains_a_term_it_does_not_know(tmp_path):
    """Two steps of the unchanged trainer with and without the term (same seed, one device): the
    term's input reaches the step, its metric is logged at every step, its own parameter moves,
    and its gradient changes the denoiser's parameters."""
    devices = jax.devices()[:1]
    without = trainer.train(config(), tmp_path / "without", devices)
    terms.register(MeanMatch)
    try:
        with_term = trainer.train(config(), tmp_path / "with", devices)
    finally:
        del terms.TERMS[MeanMatch.name]
    assert with_term["step"] == without["step"] == 2
    logged = _metrics(tmp_path / "with")
    assert [r["step"] for r in logged] == [1, 2]
    assert all(np.isfinite(r["mean_match_loss"]) and r["mean_match_loss"] > 0 for r in logged)
    assert all("mean_match_loss" not in r for r in _metrics(tmp_path / "without"))
    params = jax.device_get(with_term["state"]["params"])
    assert set(params) == {"denoiser", "mean_match"}
    assert set(jax.device_get(without["state"]["params"])) == {"denoiser"}
    assert float(params["mean_match"]["scale"]) != 1.0  # its gradient reached it
    diff = [float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(params["denoiser"]),
        jax.tree.leaves(jax.device_get(without["state"]["params"]["denoiser"])), strict=True)]
    assert max(diff) > 0
    # The base loss of the first step is the same draw: the logged loss differs by λ · ℓ exactly
    # as far as float32 sums go (step 1 starts from the same parameters).
    first, first_plain = logged[0], _metrics(tmp_path / "without")[0]
    np.testing.assert_allclose(first["loss"], first_plain["loss"]
                               + WEIGHT * first["mean_match_loss"], rtol=1e-5)
