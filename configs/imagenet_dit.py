"""DiT-XL/2 on ImageNet 256×256, the DiT paper's job (Peebles & Xie 2023): SD-VAE latents.

    # 1. Encode ImageNet once (256×256 ADM center crops and their flips → 32×32×4 latent moments):
    python launch/encode_latents.py --config=configs/imagenet_dit.py --out=$LATENTS \
        --config.data.manual_dir=/path/to/dir/with/ILSVRC2012_img_train.tar+val.tar \
        --config.autoencoder.weights=/path/to/sd-vae-ft-ema
    # 2. Train:
    python launch/train.py --config=configs/imagenet_dit.py --workdir=$WORKDIR \
        --config.data.latent_dir=$LATENTS --config.autoencoder.weights=/path/to/sd-vae-ft-ema
    # 3. Sample 50K as DiT does and evaluate against ADM's reference batch:
    python launch/sample.py --workdir=$WORKDIR --num_samples=50000 --batch_size=250
    python launch/evaluate.py --samples=$WORKDIR/samples/<name>.npz \
        --ref=VIRTUAL_imagenet256_labeled.npz --inception_weights=inception_fid.npz

Recipe: DDPM linear-β schedule with T = 1000 steps (diffusion.timesteps), ε-prediction with
learned σ (IDDPM's hybrid loss L_simple + L_vlb), AdamW lr 1e-4 without weight decay or clipping,
global batch 256, EMA 0.9999, label dropout 0.1, 400k (the paper's FID 9.62 without guidance)
to 7M steps. Latents: the SD-VAE (stabilityai/sd-vae-ft-ema; download its config.json and
diffusion_pytorch_model.safetensors into a folder), one posterior draw per image and epoch from
a random flip, × 0.18215.

Sampling (the defaults below, what DiT's sample.py does): 250 DDPM steps on DiT's respaced grid
with the learned variance, classifier-free guidance 1.5 on the first 3 latent channels (as DiT's
`forward_with_cfg`), EMA weights. Expected: FID-50K 2.27 (DiT-XL/2 at 7M steps, cfg 1.5, ADM's
evaluator and `VIRTUAL_imagenet256_labeled.npz`; evaluate.py's default 'adm' preprocessing).
"""

from configs.imagenet_common import imagenet_recipe


def get_config():
    c = imagenet_recipe(image_size=256)
    c.data.kind = "latents"
    c.model.spec = {"name": "DiT-XL/2"}
    c.model.prediction = "eps"
    c.model.learn_sigma = True
    c.diffusion.schedule = "ddpm_linear"
    c.diffusion.timesteps = 1000
    c.diffusion.objective = "ddpm_simple"
    c.sample.sampler = "ddpm"
    c.sample.num_steps = 250
    c.sample.options = {"variance": "learned", "spacing": "ddpm_respaced"}
    c.sample.guidance_scale = 1.5
    c.sample.guidance_channels = 3
    return c
