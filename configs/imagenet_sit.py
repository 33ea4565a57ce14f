"""SiT: flow matching with a velocity-predicting DiT (Ma et al. 2024), SiT-XL/2 recipe.

    python launch/train.py --config=configs/imagenet_sit.py --workdir=gs://BUCKET/sit_xl2 \
        --config.data.manual_dir=/path/to/dir/with/ILSVRC2012_img_train.tar+val.tar

Rectified flow (α = 1 − t, σ = t), the DiT predicts the velocity u = ε − x (SiT's v with its
t = 1-is-data convention flipped), loss ‖u − û‖² with logit(t) ~ N(0, 1) (SD3's density; SiT
draws t uniformly), AdamW 1e-4, batch 256, EMA 0.9999, label dropout 0.1, Heun sampling. As
configs/imagenet_dit.py, it runs on ImageNet pixels at 32×32×3 until the latent dataset exists.
"""

from vdm_jax.config import default_config


def get_config():
    c = default_config()
    c.data.name = "imagenet2012"
    c.data.image_size = 32
    c.data.random_flip = True
    c.data.worker_count = 8
    c.model.name = "DiT-XL/2"
    c.model.prediction = "flow"
    c.model.dtype = "bfloat16"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 1e-4
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 0.0
    c.optim.ema_decays = (0.9999,)
    c.train.num_steps = 400_000
    c.train.global_batch_size = 256
    c.train.checkpoint_every = 10_000
    c.train.log_every = 100
    c.sample.every = 10_000
    c.sample.sampler = "heun"
    c.sample.num_steps = 50
    c.sample.guidance_scale = 1.5
    c.sample.num_images = 64
    return c
