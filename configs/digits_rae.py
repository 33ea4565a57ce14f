"""RAE part 2 at the digits' scale, on a CPU: a tiny DiT^DH on the digits RAE's latents, sampled
without guidance, with CFG and with AutoGuidance by a smaller, earlier run of this config.

    # 1. the digits RAE (configs/digits_rae_decoder.py): frozen digits CNN → 4×4×64 latents,
    #    ViT-MAE decoder; writes the autoencoder folder workdirs/digits_rae/autoencoder
    python launch/train_decoder.py --config=configs/digits_rae_decoder.py \
        --workdir=workdirs/digits_rae
    # 2. the digits (train 1497, test 300; and their flips, unused here) → latents
    python launch/encode_latents.py --config=configs/digits_rae.py \
        --out=workdirs/digits_rae_latents \
        --config.autoencoder.weights=workdirs/digits_rae/autoencoder
    # 3. the main model, then the guide: a smaller DiT^DH of the same recipe, stopped at step 500
    #    (still on the constant learning rate: an early checkpoint of a full run of it)
    python launch/train.py --config=configs/digits_rae.py --workdir=workdirs/digits_rae_dit \
        --config.data.latent_dir=workdirs/digits_rae_latents \
        --config.autoencoder.weights=workdirs/digits_rae/autoencoder
    python launch/train.py --config=configs/digits_rae.py --workdir=workdirs/digits_rae_guide \
        --config.data.latent_dir=workdirs/digits_rae_latents \
        --config.autoencoder.weights=workdirs/digits_rae/autoencoder \
        --config.model.spec='{"family": "dit_dh", "depth": 2, "hidden_size": 32, "num_heads": 2,
            "patch_size": 1, "head_depth": 1, "head_hidden_size": 64, "head_num_heads": 2}' \
        --config.train.num_steps=500 --config.train.checkpoint_every=250
    # 4. 500 class-balanced samples each (the same labels and noise), Euler on RAE's grid
    python launch/sample.py --workdir=workdirs/digits_rae_dit --num_samples=500 --batch_size=250 \
        [--guidance_scale=W | --guidance=auto --guidance_scale=W \
         --guide_workdir=workdirs/digits_rae_guide --guide_step=500]
    python launch/evaluate.py --samples=workdirs/digits_rae_dit/samples/<name>.npz --digits \
        --workdir=workdirs/digits_rae_dit

Latents: the digits RAE's (RAE part 1 at the digits' scale): the 4 × 4 × 64 conv features of the
frozen digits CNN, normalized per channel by their training-split statistics
(data.latent_scaling='per_channel'), decoded by its ViT-MAE decoder to 8 × 8 × 1 digits. The
digits CNN is also the metric network of the digits-FID and the class accuracy (its 64-d dense
features and its logits, on top of these conv features): the model is generated in the feature
space the metric reads, so these figures compare the three sampling modes, not this model with
the pixel-space digits DiT.

Model: DiT^DH (vdm_jax.nn.dit_dh) on the 16 tokens of patch 1: a backbone of 4 blocks of width
64 (4 heads) and a wide head of 2 blocks of width 128 (4 heads), 993,508 parameters (NNX Params;
the guide of step 3: 2 + 1 blocks of widths 32 and 64, 151,720).

Recipe (RAE's, imagenet_rae.py, at this scale): rectified flow, velocity prediction, logit-normal
t with the dimension-dependent time shift, α = sqrt(4·4·64 / 4096) = 0.5 (this latent is smaller
than RAE's base dimension 4096, so the shift moves t toward the data); label dropout 0.1;
AdamW β = (0.9, 0.95), gradient clipping 1, lr 1e-3 after 100 warm-up steps, constant until
step 1000, linear to 1e-4 at step 2000; batch 128, 2000 steps; EMA 0.999. Sampling: Euler, 49
steps from t = 1 to t = 0.001 on the shifted grid (RAE's 50 time points).

Measured (2026-12-07, this project's 2-core CPU, shared; README "AutoGuidance, CFG and no
guidance on the digits RAE latents"): 500 samples each, digits-FID (floor 22.14) / class
accuracy — none 86.69 / 0.292; CFG 1.5: 83.94 / 0.418, 2: 85.38 / 0.498, 3: 98.40 / 0.644;
AutoGuidance by the step-500 guide 1.5: 67.74 / 0.352, 2: 68.63 / 0.382, 3: 89.55 / 0.410 (by
its step 250, 1.5: 73.40 / 0.342). The main model trained in 17 min 41 s wall, the guide in
2 min 44 s.
"""

from vdm_jax.config import default_config


def get_config():
    c = default_config()
    c.seed = 0
    c.data.name = "digits"
    c.data.kind = "latents"
    c.data.latent_scaling = "per_channel"
    c.model.spec = dict(family="dit_dh", depth=4, hidden_size=64, num_heads=4, patch_size=1,
                        head_depth=2, head_hidden_size=128, head_num_heads=4)
    c.model.prediction = "flow"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"  # logit(t) ~ N(0, 1)
    c.diffusion.time_shift = "dimension"
    c.diffusion.label_dropout = 0.1
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.b2 = 0.95
    c.optim.grad_clip = 1.0
    c.optim.schedule = "linear"
    c.optim.decay_start_steps = 1000
    c.optim.decay_end_steps = 2000
    c.optim.final_lr = 1e-4
    c.optim.ema_decays = (0.999,)
    c.train.num_steps = 2000
    c.train.global_batch_size = 128
    c.train.log_every = 100
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 10
    c.sample.every = 1000
    c.sample.num_images = 100
    c.sample.sampler = "euler"
    c.sample.num_steps = 49
    c.sample.options = {"t_min": 0.001, "t_max": 1.0}
    return c
