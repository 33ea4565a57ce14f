"""VDM learned schedule: strict monotonicity, exact endpoints, gradients, Schedule wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vdm_jax.core.schedules import Schedule, log_snr_and_derivative
from vdm_jax.nn.learned_schedule import LearnedGamma, learned_schedule

G_MIN, G_MAX = -13.3, 5.0


def random_net(seed, scale=3.0, n_features=256):
    """A net whose raw parameters are redrawn with a large spread (well away from the init)."""
    net = LearnedGamma(G_MIN, G_MAX, n_features, rngs=nnx.Rngs(seed))
    state = nnx.state(net, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(100 + seed), len(leaves))
    leaves = [scale * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves, strict=True)]
    nnx.update(net, jax.tree.unflatten(treedef, leaves))
    return net


@nnx.jit
def gamma_jit(net, t):
    return net(t)


@pytest.mark.parametrize("seed", range(4))
def test_strictly_monotone_with_exact_endpoints(seed):
    net = random_net(seed)
    t = jnp.linspace(0.0, 1.0, 2001)
    for gamma in (net(t), gamma_jit(net, t)):  # eager and compiled
        assert bool(jnp.all(jnp.diff(gamma) > 0))
        assert float(gamma[0]) == np.float32(G_MIN)
        assert float(gamma[-1]) == np.float32(G_MAX)
    # Scalars and other shapes, including the endpoints inside a batch.
    assert float(net(jnp.float32(0.0))) == np.float32(G_MIN)
    assert float(net(jnp.float32(1.0))) == np.float32(G_MAX)
    grid = gamma_jit(net, jnp.array([[1.0, 0.3], [0.0, 1.0]]))
    assert grid.shape == (2, 2) and grid[0, 0] == grid[1, 1] == np.float32(G_MAX)


def test_gradient_reaches_every_parameter():
    net = random_net(0, scale=1.0)
    t = jnp.linspace(0.0, 1.0, 33)
    target = jnp.linspace(G_MIN, G_MAX, 33) ** 3 / G_MAX**2  # any non-linear curve

    def loss(net):
        return jnp.mean((net(t) - target) ** 2)

    grads = nnx.grad(loss)(net)
    for path, g in nnx.to_flat_state(grads):
        assert bool(jnp.any(g[...] != 0)), path
        assert bool(jnp.all(jnp.isfinite(g[...]))), path


def test_as_schedule_log_snr_and_derivative():
    net = random_net(1)
    sched = learned_schedule(net)
    assert isinstance(sched, Schedule) and sched.family == "vp"
    t = jnp.array([0.0, 0.1, 0.5, 0.9, 1.0])
    lam, dlam = log_snr_and_derivative(sched, t)
    np.testing.assert_allclose(lam, -net(t), rtol=1e-6)  # through jvp: another program
    assert float(lam[0]) == np.float32(-G_MIN) and float(lam[-1]) == np.float32(-G_MAX)
    assert bool(jnp.all(dlam < 0))  # λ strictly decreasing, at the endpoints too
    # dλ/dt agrees with finite differences, one-sided at the endpoints (where the value is
    # snapped exactly but the derivative must still be the network's).
    h = 1e-3
    inner = jnp.clip(t, h, 1 - h)
    fd = (net(inner + h) - net(inner - h)) / (2 * h)
    np.testing.assert_allclose(-dlam[1:-1], fd[1:-1], rtol=2e-2)
    fd0 = (net(jnp.float32(h)) - net(jnp.float32(0.0))) / h
    fd1 = (net(jnp.float32(1.0)) - net(jnp.float32(1 - h))) / h
    np.testing.assert_allclose([-dlam[0], -dlam[-1]], [fd0, fd1], rtol=5e-2)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="gamma_min < gamma_max"):
        LearnedGamma(5.0, -13.3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="n_features"):
        LearnedGamma(n_features=0, rngs=nnx.Rngs(0))
