"""MeanFlow (Geng et al. 2025) on scikit-learn's 8×8 digits, on a CPU: one- and two-step samples.

    python launch/train.py --config=configs/digits_meanflow.py --workdir=workdirs/digits_meanflow

A class-conditional two-time DiT u(z, r, t) of the demo's size (configs/digits_dit.py) trained with
the MeanFlow objective on rectified flow (core.meanflow: the paper's p = 1, logit-normal(−0.4, 1)
times, 75% of rows with r = t). At the end it prints, for 1-NFE (z_0 = z_1 − u(z_1, 0, 1)) and
2-NFE (through t = ½) samples, the accuracy of the digits classifier on class-conditional
samples and the digits-FID against the test split with its real-vs-real floor
(vdm_jax.evaluation.digits, the same metrics as the DiT demo). Bits/dim is reported n/a: a
MeanFlow model learns average velocities and bounds no likelihood.

Sample more later with `python launch/sample.py --workdir=workdirs/digits_meanflow
--sampler=meanflow --steps=1 --num_samples=1000`; guidance is part of training here (ω below),
so sampling takes no guidance scale.
"""

from configs import digits_dit


def get_config():
    # The demo's data, network size, optimizer, budget and evaluation (configs/digits_dit.py);
    # what MeanFlow changes is below.
    c = digits_dit.get_config()
    c.model.spec = {**c.model.spec.to_dict(), "second_time": True}  # u(z, r, t)
    c.model.prediction = "average_velocity"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.schedule_kwargs = {}
    c.diffusion.objective = "meanflow"
    # The paper's objective (core.meanflow defaults) with guidance folded into the target:
    # ṽ = ω v + (1 − ω) u(z, t, t | ∅) for t in the interval, the effective scale ω′ = ω.
    c.diffusion.objective_kwargs = dict(omega=2.0, kappa=0.0, guidance_interval=(0.0, 1.0))
    c.optim.b2 = 0.95  # the paper's Adam β2
    c.sample.sampler = "meanflow"
    c.sample.num_steps = 1
    c.sample.guidance_scale = 1.0  # guidance is part of training (ω above)
    c.eval.num_steps = (1, 2)  # 1-NFE and 2-NFE samples, each with its metrics
    return c
