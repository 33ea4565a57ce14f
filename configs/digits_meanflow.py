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

from vdm_jax.config import default_config


def get_config():
    c = default_config()
    c.seed = 0
    c.data.name = "digits"
    c.model.spec = dict(family="dit", depth=4, hidden_size=128, num_heads=4, patch_size=2,
                        second_time=True)
    c.model.prediction = "average_velocity"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "meanflow"
    # The paper's objective (core.meanflow defaults) with guidance folded into the target:
    # ṽ = ω v + (1 − ω) u(z, t, t | ∅) for t in the interval, the effective scale ω′ = ω.
    c.diffusion.objective_kwargs = dict(omega=2.0, kappa=0.0, guidance_interval=(0.0, 1.0))
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 1e-3
    c.optim.b2 = 0.95  # the paper's Adam β2
    c.optim.warmup_steps = 100
    c.optim.schedule = "cosine"
    c.optim.ema_decays = (0.999,)
    c.train.num_steps = 1500
    c.train.global_batch_size = 128
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.sample.every = 500
    c.sample.sampler = "meanflow"
    c.sample.num_steps = 1
    c.sample.guidance_scale = 1.0
    c.sample.num_images = 100
    c.eval.at_end = True
    c.eval.num_samples = 500
    c.eval.num_steps = (1, 2)
    return c
