"""Generate tests/fixtures/adm_resize/adm_resize.npz: ADM's Inception input preprocessing by TF.

ADM's evaluator feeds float32 8-bit values k ∈ [0, 255] to the inception-2015-12-05 graph at
`ExpandDims:0`; the graph resizes with its `ResizeBilinear` op (TF1 legacy bilinear:
align_corners=False, half_pixel_centers=False) to 299×299, then subtracts 128 and multiplies by
1/128. This script runs exactly that with TensorFlow's own kernel,
    tf.compat.v1.image.resize_bilinear(k, [299, 299], align_corners=False,
                                       half_pixel_centers=False), then (· − 128)/128,
on fixed random uint8 images of several sizes: 64×64, 37×50 (non-square, upsampling), a 5×256
strip and a 256×5 strip (the 256 → 299 ratio of ImageNet-256 along each axis). The full outputs
would be 1 MB per image, so it stores the output rows `index` (all columns) and the output
columns `index` (all rows) in float32 (float16 would not hold 1e-5): every 6th, and the last
four, where the upper neighbour is clamped to the edge.

Produced with tensorflow-cpu 2.21.0 and numpy 2.4.6 (Python 3.11, /work/refenv). Not part of
the test suite or CI: run once,
    /work/refenv/bin/python tests/make_adm_resize_fixture.py
tests/test_eval_inception.py compares `inception.preprocess_uint8(images, "adm")` with it.
"""

from pathlib import Path

import numpy as np
import tensorflow as tf

OUT = Path(__file__).parent / "fixtures" / "adm_resize" / "adm_resize.npz"
SIZES = {"sq64": (64, 64), "r37x50": (37, 50), "strip5x256": (5, 256), "strip256x5": (256, 5)}
INDEX = np.array(sorted(set(range(0, 299, 6)) | {295, 296, 297, 298}))


def main() -> None:
    rng = np.random.default_rng(20240607)
    arrays = {"index": INDEX, "tf_version": np.array(tf.__version__)}
    for name, (h, w) in SIZES.items():
        images = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
        x = tf.constant(images.astype(np.float32))
        resized = tf.compat.v1.image.resize_bilinear(
            x, [299, 299], align_corners=False, half_pixel_centers=False
        )
        net_in = ((resized - 128.0) / 128.0).numpy()[0]  # (299, 299, 3)
        arrays[f"images_{name}"] = images
        arrays[f"rows_{name}"] = net_in[INDEX].astype(np.float32)
        arrays[f"cols_{name}"] = net_in[:, INDEX].astype(np.float32)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB) with TensorFlow {tf.__version__}")


if __name__ == "__main__":
    main()
