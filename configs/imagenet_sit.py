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

Sampling (the defaults below are SiT's published SDE sampler; willisma/SiT 947f95b, sample.py /
sample_ddp.py with train_utils.parse_sde_args' defaults; FID-50K 2.06 at cfg 1.5, README):
`sit_sde` (core.sit_sde): Euler–Maruyama on SiT's SDE with diffusion_form 'sigma' (D = σ_t),
diffusion_norm 1, 250 steps: 249 steps from t = 1 to 0.04 (SiT's τ ∈ [0, 0.96]; t_max = 1,
last_step_size = 0.04), then the noise-free 'mean' last step to t = 0; guidance 1.5 on the
first 3 latent channels (SiT's forward_with_cfg, as DiT's), at every step; float32 (imports set
sample.dtype; a run trained here samples in model.dtype unless --dtype says otherwise).
Equal to SiT's transport code from the same noise (tests/test_sit_sampler.py).
SiT's ODE figure (FID 2.15): `--sampler=dopri5`, whose defaults are SiT's rtol 1e-3, atol 1e-6
(core.adaptive_ode; SiT solves τ from 0 to 1, ours t from 1 to 0: the same ODE).
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
    c.sample.sampler = "sit_sde"
    c.sample.num_steps = 250
    c.sample.guidance_scale = 1.5
    c.sample.guidance_channels = 3
    c.sample.options = {"t_max": 1.0, "last_step_size": 0.04, "diffusion_form": "sigma",
                        "diffusion_norm": 1.0, "last_step": "mean"}
    return c
