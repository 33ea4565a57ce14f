"""SiT-XL/2 + REPA (Yu et al. 2025, github.com/sihyun-yu/REPA): the paper's recipe and sampler.

    python launch/train.py --config=configs/imagenet_sit_repa.py --workdir=gs://BUCKET/sit_repa \
        --config.data.manual_dir=/path/to/dir/with/ILSVRC2012_img_train.tar+val.tar \
        --config.repa.encoder_path=/path/to/dinov2-base      # HF folder facebook/dinov2-base
                                                             # or dinov2_vitb14_pretrain.pth
    python launch/sample.py --workdir=gs://BUCKET/sit_repa --num_samples=50000   # config's spec

Published: FID-50K 1.42 (SiT-XL/2 + REPA, 4M iterations, SDE sampler 250 steps, guidance 1.8 on
the interval below; ImageNet 256², ADM reference batch; REPA README and paper).

Recipe (REPA's train.py defaults): SiT-XL/2 (the DiT-XL/2 network) predicting the velocity of
rectified flow, z_t = (1 − t) x + t ε, loss ‖u − û‖² with t ~ U[0, 1] (weighting 'uniform'),
plus REPA: the hidden state after block 8 (encoder_depth 8), projected by a 3-layer SiLU MLP of
width 2048, aligned with the DINOv2-B/14 patch tokens of the clean image (224² → 16×16 tokens
for the 16×16 token grid of 32×32/2 latents), λ = 0.5. AdamW lr 1e-4, β = (0.9, 0.999), no
weight decay, gradient clipping at 1, batch 256, EMA 0.9999, label dropout 0.1; REPA trains in
fp16 mixed precision, here bfloat16.

Sampler (the defaults below; sihyun-yu/REPA 67f7145: README's generate.py command
`--mode=sde --num-steps=250 --cfg-scale=1.8 --guidance-high=0.7`, guidance_low 0 by default,
and samplers.py's euler_maruyama_sampler): REPA's SDE is SiT's with diffusion 'sigma' — its
w(t) = 2t with drift v − ½ w s and noise √w is D = σ_t = t in SiT's form — on SiT's grid: 249
Euler–Maruyama steps from t = 1 to 0.04, then a noise-free mean step to 0. So: `sit_sde`, 250
steps, t_max = 1, last_step_size = 0.04, diffusion_form 'sigma', last_step 'mean', guidance
1.8 on every channel (REPA combines the whole drift) for t ≤ 0.7. Conventions: REPA's linear
path is already ours (α_t = 1 − t, σ_t = t: t = 0 data, t = 1 noise; its loss.py
`interpolant`), unlike SiT's code (t = 1 data); so its guidance interval [guidance_low,
guidance_high] = [0, 0.7] is our (0.0, 0.7) unchanged — no guidance on the noisiest 30% of the
path. Its velocity is ours (u = ε − x). REPA runs the sampler's arithmetic in float64 around a
float32 network; here float32 throughout.

Data: as configs/imagenet_dit.py, ImageNet pixels at 32×32×3 (the 16×16 tokens of the latents)
until the SD-VAE latent loader lands; REPA's DINOv2 then sees the 32² image upsampled to 224².
On latents the loader must give each batch the clean center-cropped pixels as "pixels" (online
features, the default; see vdm_jax.model).
"""

from configs.imagenet_common import imagenet_recipe


def get_config():
    c = imagenet_recipe(image_size=32)
    c.model.spec = {"name": "DiT-XL/2"}  # SiT-XL/2 is the DiT-XL/2 network
    c.model.prediction = "flow"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    c.diffusion.objective_kwargs = {"density": "uniform"}
    c.optim.grad_clip = 1.0
    c.repa.enabled = True
    c.repa.encoder = "dinov2"
    c.repa.encoder_size = "vitb14"
    c.repa.depth = 8
    c.repa.weight = 0.5
    c.repa.projector_dim = 2048
    c.train.num_steps = 4_000_000
    c.sample.sampler = "sit_sde"
    c.sample.num_steps = 250
    c.sample.guidance_scale = 1.8
    c.sample.guidance_interval = (0.0, 0.7)
    c.sample.options = {"t_max": 1.0, "last_step_size": 0.04, "diffusion_form": "sigma",
                        "diffusion_norm": 1.0, "last_step": "mean"}
    return c
