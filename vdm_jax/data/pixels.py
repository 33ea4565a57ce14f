"""Pixel conventions: integer levels k ∈ {0..K−1} ↔ model space x ∈ [−1, 1] ↔ 8-bit files.

The pipeline feeds x = 2(k + ½)/K − 1 (docs/CONVENTIONS.md; K = 256 for 8-bit images, 17 for the
digits). Sample and reference files are 8-bit, as ADM's evaluator expects:
    x → k = clip(round((x + 1)·K/2 − ½), 0, K−1)   `unit_to_levels`  (nearest level centre)
    k → v = round(k · 255/(K − 1))                 `levels_to_uint8` (0 → 0, K−1 → 255)
    v → k = round(v · (K − 1)/255)                 `uint8_to_levels` (its inverse)
For K = 256 both maps are the identity on levels. For the digits (K = 17) an 8-bit sample maps
back to its level with `uint8_to_levels`, and `levels_to_unit` gives exactly the x of a real
digit; that inverse also recovers k from ADM's round((x + 1)·127.5) of a level centre
(|error| < ½ level for K = 17), so either 8-bit convention gives the same input.
Sample writers use `unit_to_uint8`, the composition of the first two maps.
"""

from __future__ import annotations

import numpy as np

__all__ = ["levels_to_uint8", "levels_to_unit", "uint8_to_levels", "unit_to_levels",
           "unit_to_uint8"]


def levels_to_unit(levels: np.ndarray, num_levels: int) -> np.ndarray:
    """x = 2(k + ½)/K − 1 for integer levels k ∈ {0..K−1}: (...) int -> (...) float32."""
    k = np.clip(np.asarray(levels).astype(np.float32), 0, num_levels - 1)
    return (2.0 * k + 1.0) / num_levels - 1.0


def unit_to_levels(x: np.ndarray, num_levels: int) -> np.ndarray:
    """k = clip(round((x + 1)·K/2 − ½), 0, K − 1), int64: the level whose centre is nearest x.

    Exact inverse of x = 2(k + ½)/K − 1 (the pipeline's scaling) for level centres.
    """
    k = np.round((np.asarray(x, np.float64) + 1.0) * (num_levels / 2.0) - 0.5)
    return np.clip(k, 0, num_levels - 1).astype(np.int64)


def levels_to_uint8(levels: np.ndarray, num_levels: int) -> np.ndarray:
    """v = round(k · 255/(K − 1)) as uint8: levels 0..K−1 spread over the full 8-bit range."""
    k = np.asarray(levels)
    if k.size and (k.min() < 0 or k.max() > num_levels - 1):
        raise ValueError(f"levels must lie in [0, {num_levels - 1}], got {k.min()}..{k.max()}")
    return np.round(k * (255.0 / (num_levels - 1))).astype(np.uint8)


def uint8_to_levels(images: np.ndarray, num_levels: int) -> np.ndarray:
    """k = round(v · (K − 1)/255), int64: the inverse of `levels_to_uint8` (nearest level)."""
    return np.round(np.asarray(images, np.float64) * ((num_levels - 1) / 255.0)).astype(np.int64)


def unit_to_uint8(x: np.ndarray, num_levels: int) -> np.ndarray:
    """Model/data images x in [−1, 1] → 8-bit images for `.npz` files (see the module doc)."""
    return levels_to_uint8(unit_to_levels(x, num_levels), num_levels)
