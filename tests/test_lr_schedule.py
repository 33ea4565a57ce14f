"""The learning-rate schedules of optim.schedule against their closed forms."""

import numpy as np
import pytest

from vdm_jax.config import default_config, validate
from vdm_jax.training.state import learning_rate_schedule


def test_linear_schedule_is_rae_s():
    """'linear' (RAE's, warmup_from_zero false): lr until decay_start, linear to final_lr at
    decay_end, final_lr after; a warm-up (from 0) before it when warmup_steps > 0."""
    o = default_config().optim
    o.schedule, o.lr, o.final_lr = "linear", 2e-4, 2e-5
    o.decay_start_steps, o.decay_end_steps = 40, 120
    f = learning_rate_schedule(o, 200)
    steps = np.arange(200)
    want = np.where(steps < 40, 2e-4,
                    np.where(steps >= 120, 2e-5, 2e-4 + (2e-5 - 2e-4) * (steps - 40) / 80))
    np.testing.assert_allclose([float(f(s)) for s in steps], want, rtol=1e-5)
    o.warmup_steps = 10
    g = learning_rate_schedule(o, 200)
    assert float(g(5)) == pytest.approx(1e-4) and float(g(39)) == pytest.approx(2e-4)
    assert float(g(80)) == pytest.approx(float(f(80)), rel=1e-5)


def test_linear_schedule_needs_an_ordered_decay():
    c = default_config()
    c.optim.schedule = "linear"
    c.optim.decay_start_steps, c.optim.decay_end_steps = 50, 50
    with pytest.raises(ValueError, match="decay_start_steps < decay_end_steps"):
        validate(c)
