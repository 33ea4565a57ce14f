"""REPA's target features, online or stored: what each costs (vdm_jax.model.terms.repa chooses).

    .venv/bin/python -m benchmarks.repa_features --batch=4 --out results/repa_features.json

Online: the frozen DINOv2 (--size, REPA: vitb14) runs inside every train step on the clean
images at 14·g × 14·g (REPA: 224², g = 16 tokens a side). Reported: its forward MACs and FLOPs
per image (vdm_jax.nn.cost.dinov2_cost, the project's MACs convention), per step at
--step_batch (REPA: 256), as a fraction of a SiT-XL/2 train step (3 × forward FLOPs per image,
CONVENTIONS.md), and the measured wall time of `target_tokens` (preprocess + DINOv2, jitted, a
randomly initialized network of the same size: the weights do not change the time) for
--batch images on this host, median of --steps runs. Stored: T·D bytes per image and view in
float16, for one view and with the flipped view the latent pipeline also keeps, and for
ImageNet's 1,281,167 training images; the bytes a step reads at --step_batch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import report, timing
from vdm_jax.nn.cost import dinov2_cost, model_cost
from vdm_jax.nn.encoders.dinov2 import SIZES, DinoV2, DinoV2Config
from vdm_jax.nn.repa import target_tokens

IMAGENET_TRAIN = 1_281_167
COLUMNS = [("quantity", "quantity"), ("value", "value")]


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="vitb14", choices=sorted(SIZES))
    p.add_argument("--grid", type=int, default=16, help="tokens a side (REPA: 16 at 224²)")
    p.add_argument("--image_size", type=int, default=256, help="side of the clean images")
    p.add_argument("--batch", type=int, default=4, help="images timed per call on this host")
    p.add_argument("--step_batch", type=int, default=256, help="the train step's batch")
    p.add_argument("--steps", type=int, default=3, help="timed calls")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--out", default=None, help="JSON results")
    return p.parse_args(argv)


def main(argv: list[str]) -> dict[str, Any]:
    args = parse(argv)
    d, layers, _, _ = SIZES[args.size]
    side = 14 * args.grid
    enc = dinov2_cost(d, layers, image_size=side)
    sit = model_cost("DiT-XL/2", input_size=2 * args.grid, in_channels=4, num_classes=1000)
    step_train_flops = 3 * sit["flops"] * args.step_batch
    step_enc_flops = enc["flops"] * args.step_batch
    bytes_per_view = args.grid**2 * d * 2  # float16

    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    cfg = DinoV2Config.for_size(args.size, interpolation="repa")
    model = nnx.jit(lambda: DinoV2(cfg, dtype=dtype, rngs=nnx.Rngs(0)))()
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x: target_tokens(nnx.merge(graphdef, s), x, (args.grid, args.grid)))
    x = jnp.asarray(np.random.default_rng(0).uniform(
        -1, 1, (args.batch, args.image_size, args.image_size, 3)), jnp.float32)
    _, compile_s = timing.timed(lambda: fn(state, x))
    times = [timing.timed(lambda: fn(state, x))[1] for _ in range(args.steps)]
    stats = timing.summarize(times)

    rows = {
        "encoder": f"DINOv2 {args.size} at {side}² ({args.grid}×{args.grid} tokens, D={d})",
        "forward GMACs per image": enc["macs"] / 1e9,
        "forward GFLOPs per image": enc["flops"] / 1e9,
        f"encoder TFLOPs per step (batch {args.step_batch})": step_enc_flops / 1e12,
        f"SiT-XL/2 train TFLOPs per step (batch {args.step_batch})": step_train_flops / 1e12,
        "encoder / train step FLOPs": step_enc_flops / step_train_flops,
        f"measured s per {args.batch} images ({args.dtype}, this host)": stats["median_s"],
        "measured ms per image (this host)": 1e3 * stats["median_s"] / args.batch,
        "stored KiB per image (one view, float16)": bytes_per_view / 1024,
        "stored KiB per image (+ flipped view)": 2 * bytes_per_view / 1024,
        "stored GB for ImageNet train (one view)": bytes_per_view * IMAGENET_TRAIN / 1e9,
        "stored GB for ImageNet train (+ flipped view)": 2 * bytes_per_view * IMAGENET_TRAIN / 1e9,
        f"stored MB read per step (batch {args.step_batch})":
            bytes_per_view * args.step_batch / 1e6,
    }
    return report.finish("repa_features", __file__, argv, args,
                         [{"quantity": k, "value": v} for k, v in rows.items()], COLUMNS,
                         results={**rows, "compile_s": compile_s, "time": stats})


if __name__ == "__main__":
    main(sys.argv[1:])
