"""DiT^DH-XL on RAE latents, ImageNet 256×256 (Zheng, Xie et al. 2025, "Diffusion Transformers
with Representation Autoencoders"; github.com/bytetriper/RAE configs/stage2/training/ImageNet256/
DiTDH-XL_DINOv2-B.yaml and sampling/ImageNet256/DiTDHXL-DINOv2-B_AG.yaml).

    python launch/encode_latents.py --config=configs/imagenet_rae.py --out=$LATENTS \
        --config.data.manual_dir=/path/to/ILSVRC2012 --config.autoencoder.weights=RAE_DIR
    python launch/train.py --config=configs/imagenet_rae.py --workdir=$WORKDIR \
        --config.data.latent_dir=$LATENTS --config.autoencoder.weights=RAE_DIR
    # the AutoGuidance guide: DiT^DH-S of the same recipe, stopped at epoch 14
    python launch/train.py --config=configs/imagenet_rae.py --workdir=$GUIDE \
        --config.data.latent_dir=$LATENTS --config.autoencoder.weights=RAE_DIR \
        --config.model.spec='{"name": "DiTDH-S/1"}' --config.train.num_steps=17514 \
        --config.train.checkpoint_every=17514
    python launch/sample.py --workdir=$WORKDIR --num_samples=50000 --batch_size=250 \
        --guide_workdir=$GUIDE          # the defaults below: Euler 50 points, AutoGuidance 1.42
    python launch/evaluate.py --samples=$WORKDIR/samples/<name>.npz \
        --ref=VIRTUAL_imagenet256_labeled.npz --inception_weights=inception_fid.npz
    # the released models instead: launch/import_checkpoint.py --format=rae_dit (stage2_model.pt
    # of DiTDH-XL and of the guide DiTDH-S_ep14; vdm_jax.importers.rae_dit)

Published FID-50K at 256² (ImageNet 256, DINOv2-B RAE with the ViT-XL decoder): 1.51 without
guidance, 1.13 with AutoGuidance (scale 1.42, guide DiT^DH-S at epoch 14); 2.16 after 80 epochs
(the repository README, reproduced there). At 512²: 1.13 with AutoGuidance 1.5.

Latents: the frozen DINOv2-B (with registers) encoder of RAE part 1 on 224² crops, 16×16×768,
normalized by the dataset statistics (RAE's stat.pt); the ViT-XL decoder maps them to 256².

Model: DiT^DH-XL/1 (vdm_jax.nn.dit_dh: 28 blocks of width 1152 with 16 heads, then a head of
2 blocks of width 2048, patch 1; 838,675,796 parameters as the official module counts them).

Recipe (the yaml): rectified flow, velocity prediction (RAE's t = 0 is the data as ours, and its
velocity is ε − x, our 'flow'), t ~ logit-normal(0, 1) then the dimension-dependent time shift
t' = α t / (1 + (α − 1) t), α = sqrt(16·16·768 / 4096) ≈ 6.93 (diffusion.time_shift =
'dimension'); label dropout 0.1; AdamW lr 2e-4, β = (0.9, 0.95), no weight decay, gradient
clipping 1.0, global batch 1024, EMA 0.9995. Learning rate: the yaml's 'linear' schedule with
warmup_from_zero false: 2e-4 for 40 epochs, linear to 2e-5 at epoch 800, 2e-5 after; the yaml
trains 1400 epochs. An epoch is ⌊1,281,167 / 1024⌋ = 1251 steps. RAE truncates its logit-normal
draws to t ≤ 0.999 before the shift; ours keep u in (1e-6, 1 − 1e-6).

Sampling (the sampling yaml): the probability-flow ODE with Euler on RAE's grid: 50 time points
1 − linspace(0, 0.999, 50), time-shifted, i.e. 49 Euler steps from t = 1 to t = φ(0.001) — here
euler, num_steps 49, t_min 0.001, and the model's time shift warps the grid; AutoGuidance 1.42
on the whole interval, the guide named by sample.guide_workdir (the DiT^DH-S run above).
"""

from configs.imagenet_common import imagenet_recipe

STEPS_PER_EPOCH = 1_281_167 // 1024  # 1251


def get_config():
    c = imagenet_recipe(image_size=256)
    c.data.kind = "latents"
    c.model.spec = {"name": "DiTDH-XL/1"}
    c.model.prediction = "flow"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"  # logit(t) ~ N(0, 1)
    c.diffusion.time_shift = "dimension"
    c.optim.lr = 2e-4
    c.optim.b2 = 0.95
    c.optim.grad_clip = 1.0
    c.optim.schedule = "linear"
    c.optim.decay_start_steps = 40 * STEPS_PER_EPOCH
    c.optim.decay_end_steps = 800 * STEPS_PER_EPOCH
    c.optim.final_lr = 2e-5
    c.optim.ema_decays = (0.9995,)
    c.train.global_batch_size = 1024
    c.train.num_steps = 1400 * STEPS_PER_EPOCH
    c.sample.sampler = "euler"
    c.sample.num_steps = 49
    c.sample.options = {"t_min": 0.001, "t_max": 1.0}
    c.sample.guidance = "auto"
    c.sample.guidance_scale = 1.42
    c.sample.guide_workdir = "workdirs/imagenet_rae_guide_s_ep14"
    return c
