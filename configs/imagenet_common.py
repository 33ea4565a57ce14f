"""The ImageNet recipe shared by the ImageNet configs (not a config itself): DiT's training setup.

Data: ImageNet-1k from `data.manual_dir` (the original ILSVRC2012 archives, prepared offline
once), ADM center crop, horizontal flips. AdamW with a constant learning rate 1e-4, no weight
decay, no gradient clipping, global batch 256, EMA 0.9999, label dropout 0.1 for classifier-free
guidance, bfloat16 compute with float32 master weights (Peebles & Xie 2023; SiT and REPA keep it).
The network runs its blocks as one scan over stacked layers with remat 'dots_no_batch' (neither
changes what is computed).
"""

from ml_collections import ConfigDict

from vdm_jax.config import default_config


def imagenet_recipe(image_size: int) -> ConfigDict:
    c = default_config()
    c.data.name = "imagenet2012"
    c.data.image_size = image_size
    c.data.random_flip = True
    c.data.worker_count = 8
    c.model.dtype = "bfloat16"
    # One scanned block whatever the depth (compile time); the Linear layers' outputs are kept
    # for the backward pass, attention and elementwise work recomputed (vdm_jax.nn.blocks).
    c.model.scan_layers = True
    c.model.remat = "dots_no_batch"
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
    c.sample.num_images = 64
    return c
