"""DiT-XL/2 with the DiT recipe (Peebles & Xie 2023) on ImageNet.

    python launch/train.py --config=configs/imagenet_dit.py --workdir=gs://BUCKET/dit_xl2 \
        --config.data.manual_dir=/path/to/dir/with/ILSVRC2012_img_train.tar+val.tar

Recipe: DDPM linear-β schedule (T = 1000), ε-prediction with learned σ (IDDPM hybrid loss:
L_simple + L_vlb for the variance head), AdamW lr 1e-4 without weight decay, global batch 256,
EMA 0.9999, label dropout 0.1 for classifier-free guidance, 400k–7M steps.

Latents. The paper trains on 32×32×4 latents of the Stable Diffusion VAE (x 0.18215). vdm_jax
never downloads weights, and its input pipeline has no latent dataset yet: the latents would be
produced once, offline, by encoding the center-cropped 256×256 images with a VAE whose weights
the user provides, and stored as an ImageFolder-like tfds dataset. Until that loader exists this
config trains the same model and recipe on ImageNet pixels at 32×32×3 (the same 16×16 = 256
tokens per image as the 32×32×4 latents); set data.image_size to change it.
"""

from vdm_jax.config import default_config


def get_config():
    c = default_config()
    c.data.name = "imagenet2012"
    c.data.image_size = 32
    c.data.random_flip = True
    c.data.worker_count = 8
    c.model.name = "DiT-XL/2"
    c.model.prediction = "eps"
    c.model.learn_sigma = True
    c.model.dtype = "bfloat16"
    c.diffusion.schedule = "ddpm_linear"
    c.diffusion.schedule_kwargs = dict(num_steps=1000)
    c.diffusion.objective = "ddpm_simple"
    c.diffusion.objective_kwargs = dict(num_steps=1000)
    c.diffusion.ddpm_steps = 1000
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 0.0
    c.optim.ema_decays = (0.9999,)
    c.train.num_steps = 400_000
    c.train.global_batch_size = 256
    c.train.checkpoint_every = 10_000
    c.train.keep_period = 50_000
    c.train.log_every = 100
    c.sample.every = 10_000
    c.sample.sampler = "ddpm"
    c.sample.num_steps = 250
    c.sample.guidance_scale = 1.5
    c.sample.num_images = 64
    c.mesh.data = -1
    c.mesh.fsdp = 1
    return c
