"""VDM on CIFAR-10 (Kingma et al. 2021): learned noise schedule, continuous-time ELBO, bits/dim.

    python launch/train.py --config=configs/cifar10_vdm.py --workdir=workdirs/cifar10_vdm \
        --config.data.manual_dir=/path/to/dir/with/cifar-10-binary.tar.gz

The data comes from `data.manual_dir` (the binary CIFAR-10 archive, prepared offline once).
The denoiser is a DiT-B/2 on 32×32×3 pixels (VDM's paper uses a 32-block U-Net without
downsampling; the objective, schedule and evaluation are VDM's). Training minimizes the ELBO:
ε-MSE weighted by −dλ/dt with the learned monotone γ(t) (endpoints γ_min = −13.3, γ_max = 5),
whose parameters get the ELBO's gradient. Expected: held-out bits/dim decreasing towards VDM's
2.65 over millions of steps (paper: 10M steps, batch 128 on 8 TPUv3); `eval.at_end` reports it.
"""

from vdm_jax.config import default_config


def get_config():
    c = default_config()
    c.data.name = "cifar10"
    c.data.random_flip = True
    c.model.spec = {"name": "DiT-B/2"}
    c.model.prediction = "eps"
    c.diffusion.learned_schedule = True
    c.diffusion.schedule_kwargs = dict(gamma_min=-13.3, gamma_max=5.0)
    c.diffusion.objective = "elbo"
    c.diffusion.class_conditional = False
    c.diffusion.label_dropout = 0.0
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 1000
    c.optim.grad_clip = 1.0
    c.optim.weight_decay = 0.01
    c.optim.ema_decays = (0.9999,)
    c.train.num_steps = 1_000_000
    c.train.global_batch_size = 128
    c.train.checkpoint_every = 10_000
    c.train.keep_period = 100_000
    c.train.log_every = 100
    c.sample.every = 10_000
    c.sample.sampler = "ddpm"
    c.sample.num_steps = 1000
    c.sample.num_images = 64
    c.eval.at_end = True
    c.eval.batch_size = 512
    c.eval.bpd_passes = 1
    return c
