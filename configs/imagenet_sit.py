"""SiT-XL/2 on ImageNet 256×256 (Ma et al. 2024): flow matching on SD-VAE latents.

    python launch/encode_latents.py --config=configs/imagenet_sit.py --out=$LATENTS \
        --config.data.manual_dir=/path/to/ILSVRC2012 --config.autoencoder.weights=SD_VAE_DIR
    python launch/train.py --config=configs/imagenet_sit.py --workdir=$WORKDIR \
        --config.data.latent_dir=$LATENTS --config.autoencoder.weights=SD_VAE_DIR
    python launch/sample.py --workdir=$WORKDIR --num_samples=50000 --batch_size=250
    python launch/evaluate.py --samples=$WORKDIR/samples/<name>.npz \
        --ref=VIRTUAL_imagenet256_labeled.npz --inception_weights=inception_fid.npz

The same latents, model and optimization as configs/imagenet_dit.py (the shared ImageNet recipe),
with SiT's linear interpolant: rectified flow (α = 1 − t, σ = t; SiT writes t = 1 for the data,
our t is 1 − its t), the DiT predicting the velocity u = ε − x (SiT's v is −u; the loss
‖u − û‖² is the same), t ~ U[0, 1] as SiT trains, no learned σ, 7M steps for the published
numbers.

Sampling: SiT's published FID-50K 2.06 (cfg 1.5) uses its SDE sampler (Euler–Maruyama, 250 steps,
diffusion coefficient w(t) = σ_t, a final mean step); its ODE (dopri5) gives 2.15. The defaults
below are our reverse-SDE Euler–Maruyama, 250 steps, cfg 1.5 (its diffusion coefficient is the
score-based SDE's g² = −σ² dλ/dt, not SiT's w = σ form: expect close, not identical, figures).
The released SiT-XL/2 checkpoint imports with launch/import_checkpoint.py --format=sit.
"""

from configs.imagenet_common import imagenet_recipe


def get_config():
    c = imagenet_recipe(image_size=256)
    c.data.kind = "latents"
    c.model.spec = {"name": "DiT-XL/2"}
    c.model.prediction = "flow"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    c.diffusion.objective_kwargs = {"density": "uniform"}
    c.sample.sampler = "euler_maruyama"
    c.sample.num_steps = 250
    c.sample.guidance_scale = 1.5
    return c
