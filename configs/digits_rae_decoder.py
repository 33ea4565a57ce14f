"""The RAE path at the digits' scale, on a CPU (the decoder-training demonstration):

    python launch/train_decoder.py --config=configs/digits_rae_decoder.py \
        --workdir=workdirs/digits_rae

The frozen representation encoder is the digits CNN (trained here as the digits classifier and
cached in the run directory: conv features, a 4 × 4 × 64 token grid per 8 × 8 digit); a small
ViT-MAE decoder (`DigitsRAE`: width 128, 2 layers, patch 2) learns to invert it with the
official loop: L1 on noise-augmented tokens (τ = 0.8, σ = τ·U[0, 1) per example), AdamW
(0.9, 0.95) on the official cosine schedule warmed up from zero, an EMA. Then the evaluation
split is encoded (latents), decoded, and scored: L1 / MSE / PSNR and the digits-FID of the
reconstructions beside its real-vs-real floor. LPIPS and the discriminator are off
(`loss.perceptual_weight = loss.disc_weight = 0`): VGG16's four 2 × 2 poolings and the DINO
ViT-S/8 (224² input, patch 8) have no meaningful view of an 8 × 8 × 1 image (both also take RGB).
"""

from vdm_jax.training.decoder import decoder_train_config


def get_config():
    c = decoder_train_config()
    c.seed = 0
    c.data.name = "digits"
    c.model.kind = "digits"
    c.train.batch_size = 64          # 1,497 train digits → 23 steps per epoch
    c.train.num_epochs = 40.0        # 920 steps
    c.train.checkpoint_every = 250
    c.train.log_every = 100
    c.optim.lr = 1e-3
    c.optim.final_lr = 1e-4
    c.optim.warmup_epochs = 2.0
    c.optim.decay_end_epoch = 40.0
    c.optim.ema_decays = [0.99]      # a horizon of ~100 of the 920 steps
    c.loss.perceptual_weight = 0.0
    c.loss.disc_weight = 0.0
    return c
