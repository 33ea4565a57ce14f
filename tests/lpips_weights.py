"""Deterministic random VGG16 weights for the LPIPS fixture, shared by tests/make_lpips_fixture.py
and tests/test_lpips.py (NumPy only): the full-size VGG16 has 14.7 M parameters, too many to
commit, so both sides draw the same ones from a seed.

torchvision names: features.{i}.weight (O, I, 3, 3), features.{i}.bias (O,), i the position of
the convolution in vgg16().features; He-normal weights, biases N(0, 0.1²).
"""

from __future__ import annotations

import numpy as np

STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def conv_indices() -> list[tuple[int, int]]:
    """(stage, index in vgg16().features) of each convolution, in order."""
    out, idx = [], 0
    for s, stage in enumerate(STAGES):
        if s:
            idx += 1  # the max-pool
        for _ in stage:
            out.append((s, idx))
            idx += 2  # conv, ReLU
    return out


def random_vgg16_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state, cin = {}, 3
    widths = [c for stage in STAGES for c in stage]
    for (_, idx), cout in zip(conv_indices(), widths, strict=True):
        std = np.float32(np.sqrt(2.0 / (cin * 9)))
        state[f"features.{idx}.weight"] = rng.standard_normal((cout, cin, 3, 3),
                                                               dtype=np.float32) * std
        state[f"features.{idx}.bias"] = rng.standard_normal((cout,), dtype=np.float32) * 0.1
        cin = cout
    return state
