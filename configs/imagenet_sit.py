"""SiT: flow matching with a velocity-predicting DiT (Ma et al. 2024), SiT-XL/2 recipe.

    python launch/train.py --config=configs/imagenet_sit.py --workdir=gs://BUCKET/sit_xl2 \
        --config.data.manual_dir=/path/to/dir/with/ILSVRC2012_img_train.tar+val.tar

Rectified flow (α = 1 − t, σ = t), the DiT predicts the velocity u = ε − x (SiT's v with its
t = 1-is-data convention flipped), loss ‖u − û‖² with logit(t) ~ N(0, 1) (SD3's density; SiT
draws t uniformly), AdamW 1e-4, batch 256, EMA 0.9999, label dropout 0.1, Heun sampling. As
configs/imagenet_dit.py, it runs on ImageNet pixels at 32×32×3 until the latent dataset exists.
"""

from configs.imagenet_common import imagenet_recipe


def get_config():
    c = imagenet_recipe(image_size=32)
    c.model.spec = {"name": "DiT-XL/2"}
    c.model.prediction = "flow"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "flow_matching"
    c.sample.sampler = "heun"
    c.sample.num_steps = 50
    c.sample.guidance_scale = 1.5
    return c
