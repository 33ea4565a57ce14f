"""JiT-B/16 in pixel space (Li & He 2025): x-prediction trained with the v-loss, logit-normal t.

    python launch/train.py --config=configs/imagenet_jit.py --workdir=gs://BUCKET/jit_b16 \
        --config.data.manual_dir=/path/to/dir/with/ILSVRC2012_img_train.tar+val.tar

Rectified flow (α = 1 − t, σ = t), the network predicts x, the loss is JiT's
‖v − v̂‖² = ‖x − x̂‖² / max(t, 0.05)² with logit(t) ~ N(0.8, 0.8²) (JiT's P_mean = −0.8 in its
t = 1-is-data convention), 256×256 pixels, no external weights. JiT: AdamW lr 2e-4 with batch
1024, EMA, label dropout 0.1, Heun sampling with 50 steps and CFG with an interval.
"""

from configs.imagenet_common import imagenet_recipe


def get_config():
    c = imagenet_recipe(image_size=256)
    c.model.spec = {"name": "JiT-B/16"}
    c.model.prediction = "x"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "jit"
    c.optim.lr = 2e-4
    c.optim.b2 = 0.95
    c.optim.warmup_steps = 5_000
    c.optim.grad_clip = 1.0
    c.optim.ema_decays = (0.9999, 0.9996)
    c.train.num_steps = 600_000
    c.train.global_batch_size = 1024
    c.sample.sampler = "heun"
    c.sample.num_steps = 50
    c.sample.guidance_scale = 2.9
    c.sample.guidance_interval = (0.0, 0.9)
    c.mesh.fsdp = -1
    c.mesh.data = 1
    return c
