"""Input pipeline throughput: JPEG decode + ADM center crop + random flip, through the real
pipeline (ImageFolder -> tfds array_record -> grain), in images/s.

Writes a synthetic ImageFolder of `--num-images` JPEGs with sizes drawn around ImageNet's typical
500×375 (width 400..600, height 300..450; smooth random content plus noise, quality 90) into a
temporary directory, prepares it, then times `--num-batches` local batches of
`train_iterator` at `--image-size` after one warm-up batch. Preparation time is reported apart.

  .venv/bin/python -m benchmarks.input_pipeline --out results/input_pipeline.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from ml_collections import ConfigDict
from PIL import Image

from benchmarks import report
from vdm_jax.data import dataset_info, train_iterator

COLUMNS = [("images", "num_images"), ("size", "image_size"), ("batch", "batch_size"),
           ("workers", "worker_count"), ("threads", "read_threads"), ("prepare s", "prepare_s"),
           ("images/s", "images_per_s")]


def write_image_folder(root: str, num_images: int, num_classes: int = 10, seed: int = 0) -> None:
    """root/train/class_<c>/img_<i>.jpg with sizes around 500×375."""
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        width, height = int(rng.integers(400, 601)), int(rng.integers(300, 451))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
        folder = os.path.join(root, "train", f"class_{i % num_classes}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(pixels).save(os.path.join(folder, f"img_{i:05d}.jpg"), quality=90)


def run(args: argparse.Namespace, workdir: str) -> dict:
    root = os.path.join(workdir, "images")
    start = time.perf_counter()
    write_image_folder(root, args.num_images)
    write_s = time.perf_counter() - start
    cfg = ConfigDict(
        dict(name="image_folder", image_folder=root, data_dir=os.path.join(workdir, "tfds"),
             image_size=args.image_size, random_flip=True, worker_count=args.worker_count,
             read_threads=args.read_threads)
    )
    start = time.perf_counter()
    info = dataset_info(cfg)
    prepare_s = time.perf_counter() - start

    it = train_iterator(cfg, global_batch_size=args.batch_size, seed=0)
    batch = next(it)  # warm-up: starts the reader threads (and workers)
    assert batch["image"].shape == (args.batch_size, *info.image_shape)
    start = time.perf_counter()
    for _ in range(args.num_batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    images = args.num_batches * args.batch_size
    return {
        "source": "synthetic ImageFolder JPEG, ~500x375 (w 400..600, h 300..450), quality 90",
        "num_images": args.num_images,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_batches": args.num_batches,
        "worker_count": args.worker_count,
        "read_threads": args.read_threads,
        "write_s": round(write_s, 3),
        "prepare_s": round(prepare_s, 3),
        "timed_images": images,
        "elapsed_s": round(elapsed, 3),
        "images_per_s": round(images / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-batches", type=int, default=16, help="timed batches")
    parser.add_argument("--worker-count", type=int, default=0, help="grain worker processes")
    parser.add_argument("--read-threads", type=int, default=8, help="grain reader threads")
    parser.add_argument("--workdir", default=None, help="keep the images here (default: temp)")
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)

    if args.workdir:
        row = run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="vdm_jax_input_bench_") as workdir:
            row = run(args, workdir)
    return report.finish("input_pipeline", __file__, argv, args, [row], COLUMNS)


if __name__ == "__main__":
    main()
