"""Scan over layers and remat (vdm_jax.nn.blocks): a scanned network computes what the unrolled
one computes (DiT, JiT, DDT, with REPA's hidden state), every remat policy gives the gradients
of none, the official DiT layout imports into and exports from a scanned model, the layer axis
is never sharded, and a scanned model's checkpoint restores."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm_jax import config as config_lib
from vdm_jax import model as dm
from vdm_jax.checkpoints import manager as ckpt_lib
from vdm_jax.importers.dit import export_dit, import_dit
from vdm_jax.nn.blocks import (
    LAYER_AXIS,
    REMAT_POLICIES,
    num_layers,
    stack_layers,
    unstack_layers,
)
from vdm_jax.nn.cost import model_cost
from vdm_jax.nn.registry import build_model, logical_specs
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.training import state as state_lib

WEIGHTS = Path(__file__).parent / "fixtures" / "dit" / "official_weights.safetensors"
HW, C, K = (8, 12), 3, 5  # a non-square input, channels, classes
SPECS = {
    "dit": dict(family="dit", depth=3, hidden_size=32, num_heads=2, patch_size=2,
                second_time=True),
    # class tokens join at block 1 of 4: the scan splits there and at the hidden state
    "jit": dict(family="jit", depth=4, hidden_size=32, num_heads=2, patch_size=4,
                bottleneck_dim=8, in_context_len=3, in_context_start=1),
    "ddt": dict(family="ddt", encoder_depth=3, decoder_depth=2, hidden_size=32, num_heads=2,
                patch_size=2),
    # RAE's DiT^DH: the backbone scans, its wide head (another width) stays unrolled
    "dit_dh": dict(family="dit_dh", depth=3, hidden_size=32, num_heads=2, patch_size=2,
                   head_depth=1, head_hidden_size=48, head_num_heads=2),
}


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def build(name, seed=0, **kw):
    return build_model(SPECS[name], input_size=HW, in_channels=C, num_classes=K,
                       learn_sigma=True, rngs=nnx.Rngs(params=seed), **kw)


def randomized_pair(name, seed=0, **kw):
    """An unrolled network with every parameter perturbed (AdaLN-Zero's zeros would hide the
    blocks) and a scanned one holding the same parameters, stacked."""
    unrolled = build(name, seed)
    state = nnx.state(unrolled)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: a + 0.2 * rng.standard_normal(a.shape).astype(np.float32),
                          nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    nnx.update(unrolled, state)
    scanned = build(name, seed + 1, scan_layers=True, **kw)
    s_state = nnx.state(scanned)
    nnx.replace_by_pure_dict(s_state, stack_layers(params))
    nnx.update(scanned, s_state)
    return unrolled, scanned, params


def inputs(b=2):
    x = jax.random.normal(jax.random.key(1), (b, *HW, C))
    return x, jnp.array([0.3, 0.9])[:b], jnp.array([1, K])[:b]


@nnx.jit(static_argnames="k")
def forward(model, x, t, y, k=None):
    return model(x, t, y, return_hidden=k)


@pytest.mark.parametrize("name", list(SPECS))
def test_scanned_network_computes_the_unrolled_one(name):
    unrolled, scanned, params = randomized_pair(name)
    assert jax.tree.map(np.shape, nnx.to_pure_dict(nnx.state(scanned))) == jax.tree.map(
        np.shape, stack_layers(params))
    blocks = scanned.encoder_blocks if name == "ddt" else scanned.blocks
    assert num_layers(blocks) == SPECS[name].get("depth", SPECS[name].get("encoder_depth"))
    x, t, y = inputs()
    want = forward(unrolled, x, t, y)
    np.testing.assert_array_less(relative(forward(scanned, x, t, y), want), 1e-6)
    assert np.abs(want).max() > 0.1  # the blocks do something
    for k in range(1, num_layers(blocks) + 1):  # REPA's hidden state after each block
        (out_u, h_u), (out_s, h_s) = forward(unrolled, x, t, y, k), forward(scanned, x, t, y, k)
        np.testing.assert_array_less(relative(out_s, out_u), 1e-6)
        np.testing.assert_array_less(relative(h_s, h_u), 1e-6)
    if name == "ddt":  # encoder sharing calls the halves separately
        cond = nnx.jit(lambda m, x, t, y: m.encode(x, t, y))(scanned, x, t, y)
        out = nnx.jit(lambda m, x, c: m.decode(x, c))(scanned, x, cond)
        np.testing.assert_array_less(relative(out, want), 1e-6)


def test_every_remat_policy_gives_the_gradients_of_none():
    """JiT: its scan splits at the class tokens and at the hidden state (three runs of blocks)."""
    unrolled, scanned, _ = randomized_pair("jit")
    x, t, y = inputs()

    def grads(model):
        def loss(model):
            out, hidden = model(x, t, y, return_hidden=2)
            return jnp.mean(out ** 2) + jnp.mean(jnp.sin(hidden))
        return nnx.to_pure_dict(nnx.jit(nnx.grad(loss))(model))

    want = grads(unrolled)
    runs = [(True, policy) for policy in REMAT_POLICIES] + [(False, "full")]
    for scan, policy in runs:
        model = scanned if scan else unrolled
        model.remat = policy  # a static attribute: what the trace wraps in jax.checkpoint
        got = grads(model)
        if scan:
            got = unstack_layers(got)
        for (path, g), (_, w) in zip(jax.tree.leaves_with_path(got),
                                     jax.tree.leaves_with_path(want), strict=True):
            # float32 rounding of a differently fused program: ~1e-6 of the leaf's scale
            assert relative(g, w) < 1e-5, (scan, policy, jax.tree_util.keystr(path))


def test_remat_wraps_the_block_in_a_checkpoint():
    """The policy reaches the trace: 'full' adds a remat (checkpoint) to the jaxpr, 'none' not."""
    _, scanned, _ = randomized_pair("dit")
    x, t, y = inputs()

    def jaxpr(policy):
        scanned.remat = policy
        graphdef, state = nnx.split(scanned)
        return str(jax.make_jaxpr(
            lambda s: nnx.merge(graphdef, s)(x, t, y))(state))

    assert "checkpoint" not in jaxpr("none") and "remat" not in jaxpr("none")
    full = jaxpr("full")
    assert "checkpoint" in full or "remat" in full
    assert jaxpr("none").count(" scan[") == 1  # one scan, one traced block


def test_scanned_parameters_count_and_axes():
    for name in SPECS:
        model = build(name, scan_layers=True)
        count = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert count == model_cost(SPECS[name], input_size=HW, in_channels=C, num_classes=K,
                                   learn_sigma=True)["params"]
    specs = logical_specs(build("dit", scan_layers=True))
    assert tuple(specs["blocks"]["attn"]["qkv"]["kernel"]) == (LAYER_AXIS, "embed", "heads")
    mesh = jax.make_mesh((1, 1), mesh_lib.MESH_AXES, devices=jax.devices()[:1])
    params = nnx.to_pure_dict(nnx.state(build("dit", scan_layers=True)))
    shard = mesh_lib.param_shardings(specs, params, mesh)
    assert shard["blocks"]["mlp"]["fc1"]["kernel"].spec[0] is None  # the layer axis: replicated
    assert ("layers", None) in mesh_lib.FSDP_RULES


def test_official_dit_imports_into_and_exports_from_a_scanned_model():
    imported = import_dit(WEIGHTS, format="dit", num_heads=4)
    unrolled, scanned = imported.build(), imported.build(scan_layers=True)
    assert isinstance(scanned.blocks, nnx.Module) and not isinstance(scanned.blocks, nnx.List)
    b = 2
    x = jax.random.normal(jax.random.key(0), (b, imported.input_size, imported.input_size,
                                               imported.in_channels))
    t, y = jnp.array([0.25, 0.75]), jnp.array([0, imported.num_classes])
    np.testing.assert_array_less(
        relative(forward(scanned, x, t, y), forward(unrolled, x, t, y)), 1e-6)
    stacked = nnx.to_pure_dict(nnx.state(scanned))
    kw = dict(format="dit", input_size=imported.input_size)
    want = export_dit(imported.spec, imported.params, **kw)
    got = export_dit(imported.spec, stacked, **kw)
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)  # bit for bit


def test_scanned_checkpoint_restores(tmp_path):
    cfg = config_lib.default_config()
    cfg.model.spec = dict(SPECS["dit"], second_time=False)
    cfg.model.scan_layers = True
    cfg.model.remat = "full"
    data = dm.DataSpec(image_shape=(*HW, C), num_classes=K, num_levels=256)
    _, params = dm.build(cfg, data, 0)
    assert params["denoiser"]["blocks"]["attn"]["qkv"]["kernel"].shape[0] == 3
    params = jax.tree.map(lambda a: a + 1.0, params)  # not the values a fresh build has
    tx, _ = state_lib.make_optimizer(cfg.optim, cfg.train.num_steps)
    state = state_lib.init_state(params, tx, (0.9,), jax.random.key(0))
    ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints", async_save=False)
    ck.save(state, None, cfg.to_dict(), data.to_dict())
    ck.wait()
    _, fresh = dm.build(cfg, data, 1)
    restored, step = ck.restore_params(fresh, ema=None, ema_names=[])
    ck.close()
    assert step == 0
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("scan_layers", "yes", "model.scan_layers='yes' must be True or False"),
    ("remat", "some", "model.remat='some'; expected one of"),
])
def test_bad_keys_are_one_clear_error(key, value, message):
    cfg = config_lib.default_config().to_dict()
    cfg["model"][key] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(cfg)
