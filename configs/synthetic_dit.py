"""DiT-S/2 on synthetic 32×32×4 "latents" (random 8-bit levels) and 1000 classes: for timing the
trainer as launch/train.py runs it, with no dataset (benchmarks/trainer_speed.py).

    python launch/train.py --config=configs/synthetic_dit.py --workdir=/tmp/dit_speed \
        --config.train.num_steps=10

Everything else is the trainer's default (float32, ε-MSE, AdamW 1e-4 without weight decay,
grad clipping at 1, EMA 0.9999, labels dropped 10%). Logs every step, so metrics.jsonl holds the
images/s of each step; the end-of-run sample grid is one DDIM step per device (cheap).
"""

from vdm_jax.config import default_config


def get_config():
    c = default_config()
    c.data.name = "synthetic"
    c.data.image_size = 32
    c.data.synthetic_channels = 4
    c.data.synthetic_classes = 1000
    c.model.spec = dict(name="DiT-S/2")
    c.train.num_steps = 10
    c.train.global_batch_size = 32
    c.train.log_every = 1
    c.train.checkpoint_every = 100_000
    c.sample.sampler = "ddim"
    c.sample.num_steps = 1
    c.sample.num_images = 8
    return c
