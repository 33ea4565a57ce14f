"""Inception Score and improved precision/recall against independent computations."""

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy
from sklearn.neighbors import NearestNeighbors

from vdm_jax.evaluation.metrics import inception_score, knn_radii, precision_recall


def test_inception_score_matches_kl_definition():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1000, 1008)) * 3
    # Independent: exp(mean_x KL(p(y|x) || p(y))) per split with scipy's KL (entropy(p, q)).
    scores = []
    for part in np.split(logits, 10):
        p = softmax(part, axis=1)
        py = p.mean(axis=0)
        scores.append(np.exp(np.mean([entropy(row, py) for row in p])))
    mean, std = inception_score(logits, num_splits=10)
    assert mean == pytest.approx(np.mean(scores), rel=1e-9)
    assert std == pytest.approx(np.std(scores), rel=1e-6)


def test_inception_score_closed_forms():
    # Uniform predictions: p(y|x) = p(y) → IS = 1.
    assert inception_score(np.zeros((100, 1008)))[0] == pytest.approx(1.0, abs=1e-12)
    # Confident predictions spread evenly over C classes → IS = C in every split.
    c = 10
    logits = np.full((200, 1008), -1e4)
    logits[np.arange(200), np.arange(200) % c] = 0.0
    mean, std = inception_score(logits, num_splits=10)
    assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_rejects_too_few_samples():
    with pytest.raises(ValueError, match="num_splits"):
        inception_score(np.zeros((5, 10)), num_splits=10)


def _reference_pr(real, fake, k):
    # Independent: k-NN radii with sklearn (column 0 is the point itself), brute-force coverage.
    def radii(x):
        return NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)[0][:, k]

    def coverage(ref, r, q):
        d = np.linalg.norm(q[:, None, :] - ref[None, :, :], axis=-1)
        return float((d <= r[None, :]).any(axis=1).mean())

    return coverage(real, radii(real), fake), coverage(fake, radii(fake), real)


def test_precision_recall_matches_brute_force_in_blocks():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((300, 8))
    fake = rng.standard_normal((250, 8)) * 1.3 + 0.6
    want = _reference_pr(real, fake, 3)
    got = precision_recall(real, fake, k=3, max_block_elems=7000)  # ~25 rows per block
    assert 0.05 < want[0] < 0.95 and 0.05 < want[1] < 0.95  # a non-trivial case
    assert got == pytest.approx(want, abs=1.5 / 250)  # at most one boundary point may flip (fp32)


def test_knn_radii_are_squared_kth_neighbour_distances():
    x = np.random.default_rng(2).standard_normal((120, 5))
    d = NearestNeighbors(n_neighbors=4).fit(x).kneighbors(x)[0][:, 3]
    np.testing.assert_allclose(knn_radii(x, k=3, max_block_elems=1000), d**2, rtol=1e-4)


def test_identical_sets_give_one_and_far_sets_give_zero():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 64)).astype(np.float32) + 5.0
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_shape_errors():
    with pytest.raises(ValueError, match="equal D"):
        precision_recall(np.zeros((10, 3)), np.zeros((10, 4)))
