"""DiT: registry, parameter counts, AdaLN-Zero init, label dropout, gradients, bf16, sharding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import randomize
from flax import nnx

from vdm_jax.nn.layers import label_dropout, patchify, sincos_2d, timestep_embedding, unpatchify
from vdm_jax.nn.registry import MODEL_CONFIGS, build_model, logical_axes

TINY = {"family": "dit", "depth": 2, "hidden_size": 64, "num_heads": 4, "patch_size": 2}
HW = (8, 12)  # non-square on purpose


def tiny(dtype=jnp.float32, num_classes=10, learn_sigma=True, seed=0):
    return build_model(
        TINY, input_size=HW, in_channels=3, num_classes=num_classes, learn_sigma=learn_sigma,
        dtype=dtype, rngs=nnx.Rngs(seed),
    )


def inputs(seed=0, batch=4, num_classes=10):
    kx, kt, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (batch, *HW, 3))
    t = jax.random.uniform(kt, (batch,))
    y = jax.random.randint(ky, (batch,), 0, num_classes + 1)  # includes the null class
    return x, t, y


@nnx.jit
def forward(model, x, t, y):
    return model(x, t, y)


def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_registry_and_errors():
    for size in ("S", "B", "L", "XL"):
        for p in (2, 4, 8):
            assert MODEL_CONFIGS[f"DiT-{size}/{p}"]["patch_size"] == p
    with pytest.raises(ValueError, match="DiT-XL/2"):  # lists the valid names
        build_model("DiT-XXL/2", input_size=32, in_channels=4, num_classes=10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"30.*4"):  # names the size and the patch
        build_model("DiT-S/4", input_size=(32, 30), in_channels=4, num_classes=10,
                    rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_heads"):
        build_model({**TINY, "num_heads": 5}, input_size=8, in_channels=3, num_classes=0,
                    rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Unknown keys"):
        build_model({**TINY, "depht": 3}, input_size=8, in_channels=3, num_classes=0,
                    rngs=nnx.Rngs(0))
    model = tiny()
    x, t, y = inputs()
    with pytest.raises(ValueError, match="built for"):
        model(x[:, :6], t, y)
    with pytest.raises(ValueError, match="integer"):
        model(x, t, y.astype(jnp.float32))


@pytest.mark.parametrize(
    "name, paper", [("DiT-S/2", 33e6), ("DiT-B/2", 130e6), ("DiT-L/2", 458e6)]
)
def test_param_counts_match_paper(name, paper):
    model = nnx.eval_shape(lambda: build_model(
        name, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True, rngs=nnx.Rngs(0)
    ))
    assert abs(n_params(model) / paper - 1) < 5e-3


def test_xl2_param_count_exact():
    model = nnx.eval_shape(lambda: build_model(
        "DiT-XL/2", input_size=32, in_channels=4, num_classes=1000, learn_sigma=True,
        rngs=nnx.Rngs(0),
    ))
    assert n_params(model) == 674_834_720
    assert n_params(model) + model.pos_embed().size == 675_129_632  # + frozen sin-cos table


def test_zero_output_and_identity_blocks_at_init():
    model = tiny()
    x, t, y = inputs()
    out = forward(model, x, t, y)
    assert out.shape == (4, *HW, 6) and out.dtype == jnp.float32
    assert jnp.all(out == 0)
    c = jax.random.normal(jax.random.key(3), (4, 64))
    h = jax.random.normal(jax.random.key(4), (4, 24, 64))
    apply_block = nnx.jit(lambda b, h, c: b(h, c))
    for block in model.blocks:
        assert jnp.array_equal(apply_block(block, h, c), h)


def test_label_dropout():
    labels = jnp.arange(1000, dtype=jnp.int32) % 10
    key = jax.random.key(0)
    assert jnp.array_equal(label_dropout(key, labels, 0.0, 10), labels)
    dropped = label_dropout(key, labels, 1.0, 10)
    assert jnp.all(dropped == 10) and dropped.dtype == jnp.int32
    half = label_dropout(key, labels, 0.5, 10)
    kept = half != 10
    assert jnp.array_equal(half[kept], labels[kept])
    assert 0.4 < jnp.mean(kept) < 0.6
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        label_dropout(key, labels, 1.5, 10)


def test_unconditional_non_square():
    model = tiny(num_classes=0, learn_sigma=False)
    assert model.y_embedder.embedding_table.embedding.shape == (1, 64)
    randomize(model)
    x, t, _ = inputs()
    y = jnp.zeros((4,), jnp.int32)  # the null class
    out = forward(model, x, t, y)
    assert out.shape == (4, *HW, 3) and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out).mean()) > 0


def test_timestep_embedding_closed_form_and_continuity():
    t = jnp.array([0.0, 0.25, 0.5004, 1.0])
    emb = np.asarray(timestep_embedding(t))
    k = np.arange(128)
    args = 1000 * np.asarray(t, np.float64)[:, None] * np.exp(-np.log(1e4) * k / 128)[None]
    np.testing.assert_allclose(emb, np.concatenate([np.cos(args), np.sin(args)], 1), atol=2e-4)
    # The model sees t itself, not a rounded step: nearby times give different outputs.
    model = tiny()
    randomize(model)
    x, _, y = inputs()
    a = forward(model, x, jnp.full((4,), 0.5), y)
    b = forward(model, x, jnp.full((4,), 0.5004), y)
    assert not jnp.allclose(a, b)


def test_patch_embedding_is_a_strided_conv():
    model = tiny()
    x, _, _ = inputs()
    p, d = 2, 64
    kernel = model.x_embedder.kernel[...].reshape(p, p, 3, d)  # (p·p·C, D) → HWIO
    conv = jax.lax.conv_general_dilated(
        x, kernel, (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # (B, H/p, W/p, D)
    lin = model.x_embedder(patchify(x, p))  # (B, T, D)
    np.testing.assert_allclose(lin, conv.reshape(4, -1, d), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(unpatchify(patchify(x, p), (4, 6), p), x)


def test_sincos_matches_dit_reference_formula():
    d, g = 16, 3
    emb = sincos_2d(d, (g, g))
    omega = 1.0 / 10000 ** (np.arange(d // 4) / (d / 4))
    for idx in range(g * g):
        i, j = divmod(idx, g)  # row, column
        want = np.concatenate([np.sin(j * omega), np.cos(j * omega),
                               np.sin(i * omega), np.cos(i * omega)])
        np.testing.assert_allclose(emb[idx], want, atol=1e-6)
    assert sincos_2d(d, (2, 5)).shape == (10, d)


def test_every_parameter_gets_gradient_after_optimizer_steps():
    """adaLN-Zero means most gradients are exactly zero at init: only the final linear has one
    (everything else sits behind a zero gate or zero modulation). Adam's first update moves the
    final linear; only then do the modulations and gates get gradients, and once those move the
    attention/MLP/embedding weights do. So two steps are the minimum; check both facts."""
    model = tiny()
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x, t, y = inputs()
    target = jax.random.normal(jax.random.key(9), (4, *HW, 6))

    def loss_fn(m):
        return jnp.mean((m(x, t, y) - target) ** 2)

    @nnx.jit
    def train_step(model, opt):
        """One Adam step; returns which parameters had a nonzero gradient at this step."""
        grads = nnx.grad(loss_fn)(model)
        opt.update(model, grads)
        return jax.tree.map(lambda g: jnp.any(g != 0), grads)

    def nonzero(flags):
        return {"/".join(map(str, k)): bool(v[...]) for k, v in nnx.to_flat_state(flags)}

    at_init = nonzero(train_step(model, opt))
    assert {k for k, nz in at_init.items() if nz} == {
        "final_layer/linear/kernel", "final_layer/linear/bias"
    }
    train_step(model, opt)
    after_two_steps = nonzero(train_step(model, opt))
    assert all(after_two_steps.values()), [k for k, nz in after_two_steps.items() if not nz]


def test_bf16_forward_agrees_with_f32():
    f32 = tiny()
    randomize(f32)
    b16 = tiny(dtype=jnp.bfloat16)
    nnx.update(b16, nnx.state(f32))
    assert b16.blocks[0].attn.qkv.kernel[...].dtype == jnp.float32  # params stay f32
    x, t, y = inputs()
    ref, out = forward(f32, x, t, y), forward(b16, x, t, y)
    assert out.dtype == jnp.float32 and not jnp.any(jnp.isnan(out))
    rel = jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)
    assert rel < 2e-2, rel


def test_logical_axes():
    model = tiny()
    specs = nnx.to_flat_state(logical_axes(model))
    specs = {"/".join(map(str, k)): tuple(v.get_value()) for k, v in specs}
    params = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    allowed = {"embed", "mlp", "heads", "patch", "vocab", "cond", None}
    for name, param in params.items():
        spec = specs[name]
        assert len(spec) == param.ndim, name
        assert set(spec) <= allowed, name
        named = [a for a in spec if a is not None]
        assert len(named) == len(set(named)), name  # a mesh axis can shard one dim only
        if param.ndim == 2:
            assert named, f"kernel {name} has no logical axis"
    assert specs["blocks/0/attn/qkv/kernel"] == ("embed", "heads")
    assert specs["blocks/0/attn/proj/kernel"] == ("heads", "embed")
    assert specs["blocks/0/mlp/fc1/kernel"] == ("embed", "mlp")
    assert specs["blocks/0/adaLN_modulation/linear/kernel"] == ("embed", "cond")
    assert specs["x_embedder/kernel"] == ("patch", "embed")
    assert specs["y_embedder/embedding_table/embedding"] == ("vocab", "embed")


def test_eager_sharding_under_a_mesh():
    mesh = jax.make_mesh((1,), ("fsdp",))
    rules = [("embed", "fsdp"), ("mlp", None), ("heads", None), ("patch", None),
             ("vocab", None), ("cond", None)]
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        model = tiny()
    sharding = model.blocks[0].mlp.fc1.kernel[...].sharding
    assert isinstance(sharding, jax.sharding.NamedSharding)
    assert sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert math.prod(model.blocks[0].mlp.fc1.kernel.shape) == 64 * 256
