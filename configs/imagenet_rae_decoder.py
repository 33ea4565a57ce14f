"""The official RAE decoder recipe: DINOv2-B (with registers) → ViT-XL decoder on ImageNet 256²
(bytetriper/RAE configs/stage1/training/DINOv2-B_decXL.yaml, src/train_stage1.py):

    python launch/train_decoder.py --config=configs/imagenet_rae_decoder.py \\
        --workdir=$WORKDIR --config.data.manual_dir=/path/to/ILSVRC2012 \\
        --config.model.weights=/path/to/RAE-dinov2-wReg-base-ViTXL-n08 \\
        --config.loss.lpips_vgg=/path/to/vgg16-397923af.pth \\
        --config.loss.lpips_heads=/path/to/lpips/weights/v0.1/vgg.pth \\
        --config.loss.disc_dino=/path/to/dino_vit_small_patch8_224.pth

`model.weights` supplies the frozen encoder and the latent statistics (stat.pt or diffusers'
buffers); the decoder is re-initialized (`model.reinit_decoder`) and trained from scratch.
Recipe: global batch 512, 16 epochs; AdamW lr 2e-4, β = (0.9, 0.95), no weight decay, cosine to
2e-5 after one warm-up epoch from zero, the same for the discriminator; EMA 0.9978; loss L1 +
1.0·LPIPS (from epoch 0) + 0.75·λ·GAN, λ VQGAN's adaptive weight (max 1e4), the GAN term from
epoch 8, discriminator updates from epoch 6 (hinge; vanilla generator loss), DiffAug p = 1 without
cutout, DINO ViT-S/8 discriminator with kernel-9 heads; noise augmentation τ = 0.8.

Published rFID (ImageNet val 50k): 0.57 for this τ = 0.8 decoder (official README, reproduced
there at 0.54); the paper reports 0.49 for the DINOv2-B ViT-XL decoder trained without the noise
augmentation. Not reproduced here (this needs ~16 ImageNet epochs of a 415M-parameter decoder on
accelerators). Differences from the official trainer: the images are the project's ImageNet
pipeline (ADM centre crop to 256², no flip) where the official one resizes to 384 and crops
256² at random; the loop is data parallel (batch split over the devices), in float32.
"""

from vdm_jax.training.decoder import decoder_train_config


def get_config():
    c = decoder_train_config()  # the official constants are its defaults
    c.seed = 0
    c.data.name = "imagenet2012"
    c.data.image_size = 256
    c.data.random_flip = False
    c.data.worker_count = 8
    c.model.kind = "rae"
    c.model.reinit_decoder = True
    c.train.batch_size = 512
    c.train.num_epochs = 16.0
    c.train.checkpoint_every = 2500
    c.train.keep_period = 2502  # one ImageNet epoch at batch 512 (1,281,167 // 512)
    return c
