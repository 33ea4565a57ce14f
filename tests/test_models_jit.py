"""JiT: parameter counts, AdaLN-Zero init, 2D RoPE, in-context tokens, gradients, precision."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import randomize
from flax import nnx

from vdm_jax.nn.layers import apply_rope, rope_2d
from vdm_jax.nn.registry import MODEL_CONFIGS, build_model, logical_axes

TINY = {
    "family": "jit", "depth": 3, "hidden_size": 64, "num_heads": 4, "patch_size": 4,
    "bottleneck_dim": 16, "in_context_len": 4, "in_context_start": 1,
}
HW = (8, 12)  # non-square: a 2×3 patch grid


def tiny(dtype=jnp.float32, num_classes=10, learn_sigma=False, spec=TINY):
    return build_model(
        spec, input_size=HW, in_channels=3, num_classes=num_classes, learn_sigma=learn_sigma,
        dtype=dtype, rngs=nnx.Rngs(0),
    )


def inputs(seed=0, batch=4, num_classes=10):
    kx, kt, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (batch, *HW, 3))
    t = jax.random.uniform(kt, (batch,))
    y = jax.random.randint(ky, (batch,), 0, num_classes + 1)
    return x, t, y


@nnx.jit
def forward(model, x, t, y):
    return model(x, t, y)


@pytest.mark.parametrize(
    "name, paper", [("JiT-B/16", 131e6), ("JiT-L/16", 459e6), ("JiT-H/16", 953e6)]
)
def test_param_counts_match_paper(name, paper):
    model = nnx.eval_shape(lambda: build_model(
        name, input_size=256, in_channels=3, num_classes=1000, rngs=nnx.Rngs(0)
    ))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert abs(count / paper - 1) < 2e-2


def test_registry_and_spec_errors():
    assert {f"JiT-{s}/{p}" for s in "BLH" for p in (16, 32)} <= set(MODEL_CONFIGS)
    with pytest.raises(ValueError, match="in_context_start"):
        tiny(spec={**TINY, "in_context_start": 3})
    with pytest.raises(ValueError, match="multiple of 4"):
        tiny(spec={**TINY, "hidden_size": 72, "num_heads": 4})  # head dim 18
    with pytest.raises(ValueError, match=r"12.*16"):
        build_model("JiT-B/16", input_size=(256, 12), in_channels=3, num_classes=10,
                    rngs=nnx.Rngs(0))


def test_zero_output_and_identity_blocks_at_init():
    model = tiny(learn_sigma=True)
    x, t, y = inputs()
    out = forward(model, x, t, y)
    assert out.shape == (4, *HW, 6) and out.dtype == jnp.float32
    assert jnp.all(out == 0)
    c = jax.random.normal(jax.random.key(3), (4, 64))
    h = jax.random.normal(jax.random.key(4), (4, 4 + 6, 64))
    rope = tuple(map(jnp.asarray, rope_2d((2, 3), 16, num_prefix=4)))
    apply_block = nnx.jit(lambda b, h, c: b(h, c, rope))
    for block in model.blocks:
        assert jnp.array_equal(apply_block(block, h, c), h)


def test_rope_is_relative_and_leaves_prefix_tokens_alone():
    grid, dh, prefix = (5, 7), 16, 3
    cos, sin = map(jnp.asarray, rope_2d(grid, dh, num_prefix=prefix))
    kq, kk = jax.random.split(jax.random.key(0))
    n = prefix + grid[0] * grid[1]
    q = jnp.broadcast_to(jax.random.normal(kq, (dh,)), (1, n, 1, dh))  # same q at every token
    k = jnp.broadcast_to(jax.random.normal(kk, (dh,)), (1, n, 1, dh))
    rq, rk = apply_rope(q, cos, sin)[0, :, 0], apply_rope(k, cos, sin)[0, :, 0]  # (n, dh)
    np.testing.assert_array_equal(rq[:prefix], q[0, :prefix, 0])  # no rotation
    np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q[0, :, 0], axis=-1),
                               rtol=1e-5)  # rotations preserve norms

    def tok(i, j):
        return prefix + i * grid[1] + j

    # <R(p) q, R(p') k> depends only on the 2D offset p − p'.
    offset = (1, 2)
    scores = [rq[tok(i + offset[0], j + offset[1])] @ rk[tok(i, j)]
              for i in range(grid[0] - offset[0]) for j in range(grid[1] - offset[1])]
    np.testing.assert_allclose(scores, scores[0] * np.ones(len(scores)), rtol=1e-4, atol=1e-5)
    # ... and it does depend on the offset along either axis.
    assert not np.isclose(rq[tok(1, 0)] @ rk[tok(0, 0)], rq[tok(0, 1)] @ rk[tok(0, 0)])


def test_in_context_tokens_and_labels_reach_the_output():
    model = tiny()
    randomize(model)
    x, t, y = inputs()

    def out_wrt_posemb(posemb):
        model.in_context_posemb[...] = posemb
        return forward(model, x, t, y)

    base = model.in_context_posemb[...]
    a = out_wrt_posemb(base)
    b = out_wrt_posemb(base + 0.5)
    assert not jnp.allclose(a, b)  # the prepended tokens are attended to
    no_ctx = tiny(spec={**TINY, "in_context_len": 0})
    assert "in_context_posemb" not in nnx.state(no_ctx)
    assert forward(no_ctx, x, t, y).shape == (4, *HW, 3)


def test_every_parameter_gets_gradient_after_optimizer_steps():
    """See the DiT test: with adaLN-Zero, two optimizer steps are needed before every
    parameter has a nonzero gradient."""
    model = tiny()
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x, t, y = inputs()
    target = jax.random.normal(jax.random.key(9), (4, *HW, 3))

    @nnx.jit
    def train_step(model, opt):
        grads = nnx.grad(lambda m: jnp.mean((m(x, t, y) - target) ** 2))(model)
        opt.update(model, grads)
        return jax.tree.map(lambda g: jnp.any(g != 0), grads)

    train_step(model, opt)
    train_step(model, opt)
    flags = {"/".join(map(str, k)): bool(v[...])
             for k, v in nnx.to_flat_state(train_step(model, opt))}
    assert "in_context_posemb" in flags and "blocks/0/attn/q_norm/scale" in flags
    assert all(flags.values()), [k for k, nz in flags.items() if not nz]


def test_bf16_forward_agrees_with_f32():
    f32 = tiny()
    randomize(f32)
    b16 = tiny(dtype=jnp.bfloat16)
    nnx.update(b16, nnx.state(f32))
    x, t, y = inputs()
    ref, out = forward(f32, x, t, y), forward(b16, x, t, y)
    assert out.dtype == jnp.float32 and not jnp.any(jnp.isnan(out))
    rel = jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref)
    assert rel < 2e-2, rel


def test_logical_axes():
    specs = {"/".join(map(str, k)): tuple(v.get_value())
             for k, v in nnx.to_flat_state(logical_axes(tiny()))}
    assert specs["x_embedder/proj1/kernel"] == ("patch", None)
    assert specs["x_embedder/proj2/kernel"] == (None, "embed")
    assert specs["blocks/0/mlp/w12/kernel"] == ("embed", "mlp")
    assert specs["blocks/0/mlp/w3/kernel"] == ("mlp", "embed")
    assert specs["blocks/0/attn/qkv/kernel"] == ("embed", "heads")
    assert specs["in_context_posemb"] == (None, "embed")
