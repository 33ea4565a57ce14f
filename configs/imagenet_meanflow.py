"""MeanFlow MF-XL/2 with the paper's ImageNet 256×256 recipe (Geng et al. 2025, arXiv 2505.13447).

    # 1. encode ImageNet once into SD-VAE latents (32×32×4 per 256×256 image)
    python launch/encode_latents.py ...        # see its --help; writes the latent dataset
    # 2. train (set the data keys the latent loader reads, as configs/imagenet_dit.py will)
    python launch/train.py --config=configs/imagenet_meanflow.py --workdir=gs://BUCKET/mf_xl2 \
        --config.data.manual_dir=/path/to/dir/with/ILSVRC2012_img_train.tar+val.tar
    # 3. sample 50k images with one network evaluation each (1-NFE; --steps=2 for 2-NFE)
    python launch/sample.py --workdir=gs://BUCKET/mf_xl2 --sampler=meanflow --steps=1 \
        --num_samples=50000 --batch_size=500
    # 4. FID-50K against ADM's reference batch
    python launch/evaluate.py --samples=gs://BUCKET/mf_xl2/samples/<name>.npz \
        --ref=VIRTUAL_imagenet256_labeled.npz --inception_weights=inception_fid.npz

Published (Table 2, FID-50K, ImageNet 256×256, no sampling-time CFG): MF-XL/2 after 240 epochs
1-NFE 3.43, 2-NFE 2.93; MF-XL/2+ (the same model after 1000 epochs) 2-NFE 2.20.

Recipe (paper Sec. 5 and Table 4; the official JAX code github.com/Gsunshine/meanflow): a DiT-XL/2
with a second time embedding for h = t − r (spec second_time), rectified flow, the MeanFlow
objective with adaptive weight p = 1 and c = 0.01 (the official code's norm_eps; the paper's text
shows 1e-3 as an example), (r, t) from logit-normal(−0.4, 1) with 25% of rows r ≠ t; guidance
folded into the target with ω = 0.2, κ = 0.92 (effective scale ω′ = ω / (1 − κ) = 2.5) for
t ∈ [0, 0.75] (the XL/2 column of Table 4, as AlphaFlow's public MeanFlow baselines also set it),
label dropout 0.1; Adam (β1, β2) = (0.9, 0.95), constant lr 1e-4, no weight decay, no gradient
clipping, batch 256, EMA 0.9999, 240 epochs = 1.2M steps, float32 (the official code trains with
half_precision False). Sampling: z_0 = z_1 − u(z_1, 0, 1) (1-NFE) or through t = ½ (2-NFE).

Latents. The paper trains on the 32×32×4 latents of the SD-VAE (ft-EMA, ×0.18215). It trains on
them once `launch/encode_latents.py` has made them and the latent loader reads them; the data
keys then follow configs/imagenet_dit.py. Until then this config, like imagenet_dit.py, trains
the same model and recipe on ImageNet pixels at 32×32×3 (the same 16×16 = 256 tokens).
"""

from configs.imagenet_common import imagenet_recipe


def get_config():
    c = imagenet_recipe(image_size=32)
    c.model.spec = {"name": "DiT-XL/2", "second_time": True}
    c.model.prediction = "average_velocity"
    c.model.dtype = "float32"
    c.diffusion.schedule = "rectified_flow"
    c.diffusion.objective = "meanflow"
    c.diffusion.objective_kwargs = dict(
        p=1.0, c=0.01, time_mean=-0.4, time_std=1.0, equal_fraction=0.75,
        omega=0.2, kappa=0.92, guidance_interval=(0.0, 0.75),
    )
    c.diffusion.label_dropout = 0.1
    c.optim.b2 = 0.95
    c.train.num_steps = 1_200_000  # 240 epochs of 1,281,167 images at batch 256
    c.sample.sampler = "meanflow"
    c.sample.num_steps = 1
    c.sample.guidance_scale = 1.0
    c.eval.num_steps = (1, 2)
    return c
