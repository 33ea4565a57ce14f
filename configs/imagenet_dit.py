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

from configs.imagenet_common import imagenet_recipe


def get_config():
    c = imagenet_recipe(image_size=32)
    c.model.spec = {"name": "DiT-XL/2"}
    c.model.prediction = "eps"
    c.model.learn_sigma = True
    c.diffusion.schedule = "ddpm_linear"
    c.diffusion.timesteps = 1000
    c.diffusion.objective = "ddpm_simple"
    c.sample.sampler = "ddpm"
    c.sample.num_steps = 250
    c.sample.guidance_scale = 1.5
    return c
