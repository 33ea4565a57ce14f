"""Analytic parameter count and forward MACs against instantiated models, XLA's own count of the
compiled forward pass (and of a MeanFlow training step's gradient), and the DiT / JiT papers."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from vdm_jax.core import meanflow as mf
from vdm_jax.nn.cost import meanflow_train_flops, model_cost
from vdm_jax.nn.registry import build_model

LATENT = dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)  # 256² images
PIXEL = dict(input_size=256, in_channels=3, num_classes=1000, learn_sigma=False)
TINY_DIT = {"family": "dit", "depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": 2}
TINY_JIT = {"family": "jit", "depth": 3, "hidden_size": 64, "num_heads": 4, "patch_size": 4,
            "bottleneck_dim": 16, "in_context_len": 4, "in_context_start": 1}


def abstract_model(spec, **kw):
    return nnx.eval_shape(lambda: build_model(spec, rngs=nnx.Rngs(0), **kw))


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "spec, kw",
    [
        ("DiT-XL/2", LATENT),
        ("JiT-B/16", PIXEL),
        (TINY_DIT, dict(input_size=(8, 12), in_channels=3, num_classes=0, learn_sigma=False)),
        (TINY_DIT, dict(input_size=16, in_channels=1, num_classes=10, learn_sigma=True)),
        (TINY_JIT, dict(input_size=(8, 12), in_channels=3, num_classes=10, learn_sigma=True)),
        ({**TINY_JIT, "in_context_len": 0}, dict(input_size=8, in_channels=2, num_classes=0)),
    ],
)
def test_params_match_instantiated_model(spec, kw):
    model = abstract_model(spec, **kw)
    cost = model_cost(spec, **kw)
    assert cost["params"] == n_params(model)
    assert cost["params_with_pos_embed"] == n_params(model) + model.pos_embed().size


def test_dit_xl2_paper_param_counts():
    cost = model_cost("DiT-XL/2", **LATENT)
    assert cost["params"] == 674_834_720
    assert cost["params_with_pos_embed"] == 675_129_632


@pytest.mark.parametrize(
    "name, paper", [("DiT-S/2", 33e6), ("DiT-B/2", 130e6), ("DiT-L/2", 458e6)]
)
def test_dit_paper_param_counts(name, paper):
    assert abs(model_cost(name, **LATENT)["params"] / paper - 1) < 5e-3


@pytest.mark.parametrize(
    "name, input_size, paper_gmacs",
    [("DiT-S/2", 32, 6.06), ("DiT-B/2", 32, 23.01), ("DiT-L/2", 32, 80.71),
     ("DiT-XL/2", 32, 118.64), ("DiT-XL/2", 64, 524.6)],
)
def test_dit_paper_macs(name, input_size, paper_gmacs):
    cost = model_cost(name, **{**LATENT, "input_size": input_size})
    assert abs(cost["macs"] / (paper_gmacs * 1e9) - 1) < 1e-2
    assert cost["flops"] == 2 * cost["macs"]


@pytest.mark.parametrize("name, paper", [("JiT-B/16", 131e6), ("JiT-L/16", 459e6),
                                         ("JiT-H/16", 953e6)])
def test_jit_paper_param_counts(name, paper):
    assert abs(model_cost(name, **PIXEL)["params"] / paper - 1) < 2e-2


@pytest.mark.parametrize(
    "spec, kw",
    [
        ("DiT-S/2", LATENT),
        ({**TINY_JIT, "hidden_size": 256, "patch_size": 8, "bottleneck_dim": 32},
         dict(input_size=(64, 96), in_channels=3, num_classes=10, learn_sigma=True)),
    ],
)
def test_flops_match_xla_cost_analysis(spec, kw):
    """XLA counts 2 FLOPs per MAC for every dot plus elementwise work we leave out, so its
    count of the lowered forward (batch 1) is slightly above ours, by a few percent at most."""
    model = abstract_model(spec, **kw)
    graphdef, state = nnx.split(model)
    h, w = (kw["input_size"],) * 2 if isinstance(kw["input_size"], int) else kw["input_size"]
    x = jax.ShapeDtypeStruct((1, h, w, kw["in_channels"]), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32)
    lowered = jax.jit(lambda s, x, t, y: nnx.merge(graphdef, s)(x, t, y)).lower(state, x, t, y)
    xla_flops = lowered.cost_analysis()["flops"]
    ratio = xla_flops / model_cost(spec, **kw)["flops"]
    assert 1.0 <= ratio < 1.03, ratio


@pytest.mark.parametrize("omega, kappa", [(1.0, 0.0), (1.5, 0.0), (0.2, 0.92)])
def test_meanflow_train_flops_match_xla_cost_analysis(omega, kappa):
    """XLA's count of the lowered gradient of the MeanFlow loss (guided target, jvp, backward)
    of a two-time DiT, batch 4, against meanflow_train_flops: above it by the elementwise work
    only (< 3%). The network is narrow against its 256 tokens (D = 128), so the attention
    products are a quarter of F: counting their tangent once would be 6-8% low."""
    spec = {"family": "dit", "depth": 2, "hidden_size": 128, "num_heads": 2, "patch_size": 2,
            "second_time": True}
    kw = dict(input_size=32, in_channels=4, num_classes=10)
    graphdef, state = nnx.split(abstract_model(spec, **kw))
    objective = mf.objective(omega=omega, kappa=kappa)

    def loss(params, x, y, key):
        def u_fn(z, r, t, y):
            return nnx.merge(graphdef, params)(z, t, y, r=r)
        return objective.loss(u_fn, x, y, key, null_label=10)[0]

    b = 4
    x = jax.ShapeDtypeStruct((b, 32, 32, 4), jnp.float32)
    y = jax.ShapeDtypeStruct((b,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    xla_flops = jax.jit(jax.grad(loss)).lower(state, x, y, key).cost_analysis()["flops"]
    cost = model_cost(spec, **kw)
    assert 2 * cost["attention_macs"] > 0.2 * cost["flops"]
    analytic = meanflow_train_flops(cost, objective.target_evaluations) * b
    assert objective.target_evaluations == (0 if omega == 1.0 else 1 if kappa == 0.0 else 2)
    assert 1.0 <= xla_flops / analytic < 1.03, xla_flops / analytic


def test_bad_input_size():
    with pytest.raises(ValueError, match=r"30.*4"):
        model_cost("DiT-B/4", input_size=(32, 30), in_channels=4, num_classes=10)
