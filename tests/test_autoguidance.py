"""AutoGuidance (SamplingSpec.guidance='auto'): the guided prediction's closed form inside the
one jitted sampling program, and the refusal of a guide that does not fit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax.checkpoints.restore import Restored
from vdm_jax.config import schema
from vdm_jax.core import samplers
from vdm_jax.generation.batches import check_guide_run
from vdm_jax.generation.generate import check_guide, make_generate_fn
from vdm_jax.model import DataSpec, build
from vdm_jax.rundir import RunDir
from vdm_jax.sampling_spec import SamplingSpec

DATA = DataSpec(image_shape=(4, 4, 2), num_classes=3, num_levels=256)


def _model(depth: int, hidden: int, seed: int, prediction: str = "flow", data=DATA):
    c = schema.default_config()
    c.model.spec = dict(family="dit", depth=depth, hidden_size=hidden, num_heads=2, patch_size=2)
    c.model.prediction = prediction
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    c.diffusion.time_shift = 2.0
    model, params = build(c, data, seed)
    # Random final layers: the zero-initialized output would make every guidance trivial.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 7), len(leaves))
    params = jax.tree.unflatten(tree, [
        x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)])
    return model, params


def test_autoguided_sampling_is_the_closed_form():
    model, params = _model(2, 32, 0)
    guide, guide_params = _model(1, 16, 1)
    w, interval = 1.7, (0.2, 0.9)
    spec = SamplingSpec(sampler="euler", num_steps=4, guidance="auto", guidance_scale=w,
                        guidance_interval=interval)
    labels = jnp.asarray([0, 1, 2, 1], jnp.int32)
    rng = jax.random.key(5)
    got = make_generate_fn(model, 4, spec, guide=guide)((params, guide_params), labels, rng)

    def closed_form(z, t):
        d_main = model.predict(params, z, t, labels)
        d_guide = guide.predict(guide_params, z, t, labels)
        inside = ((t >= interval[0]) & (t <= interval[1]))[:, None, None, None]
        return jnp.where(inside, d_guide + w * (d_main - d_guide), d_main)

    want = samplers.sample(closed_form, model.schedule(params), (4, 4, 4, 2), rng,
                           sampler="euler", num_steps=4, prediction="flow",
                           time_shift=model.time_shift).samples
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    unguided = make_generate_fn(model, 4, spec.replace(guidance_scale=1.0))(params, labels, rng)
    assert np.max(np.abs(np.asarray(got) - np.asarray(unguided))) > 1e-3


def test_a_guide_that_does_not_fit_is_refused():
    model, _ = _model(1, 32, 0)
    eps_guide, _ = _model(1, 16, 1, prediction="eps")
    with pytest.raises(ValueError, match="prediction 'eps'"):
        check_guide(model, eps_guide)
    spec = SamplingSpec(sampler="euler", num_steps=2, guidance="auto", guidance_scale=1.5)
    with pytest.raises(ValueError, match="prediction"):
        make_generate_fn(model, 2, spec, guide=eps_guide)
    with pytest.raises(ValueError, match="guide run"):
        make_generate_fn(model, 2, spec)
    other = DataSpec(image_shape=(4, 4, 2), num_classes=3, num_levels=256,
                     pixel_shape=(32, 32, 3), latent_shift=(0.0, 0.0), latent_scale=(0.5, 0.5),
                     autoencoder={"sha256": "0" * 64})
    other_model, _ = _model(1, 16, 1, data=other)

    def restored(m, data, root):
        return Restored(m, None, None, 0, None, data, None, RunDir(root))

    with pytest.raises(ValueError, match=r"data spec differs in .*autoencoder"):
        check_guide_run(restored(model, DATA, "/tmp/main"), restored(other_model, other, "/tmp/g"))
    check_guide_run(restored(model, DATA, "/tmp/main"), restored(_model(1, 16, 1)[0], DATA, "/g"))


def test_guidance_mode_is_validated_and_recorded():
    with pytest.raises(ValueError, match="guidance must be one of"):
        SamplingSpec(guidance="classifier")
    cfg = SamplingSpec(guidance_scale=1.5)
    auto = cfg.replace(guidance="auto")
    assert "guidance" not in cfg.to_dict() and auto.to_dict()["guidance"] == "auto"
    assert auto.slug() != cfg.slug()
    assert auto.guided(0) and not cfg.guided(0)  # a guide works for unconditional models too
