"""The digits metric classifier: accuracy on sklearn digits, caching, digits-FID sanity."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from vdm_jax.evaluation import digits_classifier as dc
from vdm_jax.evaluation.frechet import frechet_from_features


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = (2 * (d.images + 0.5) / 17 - 1).astype(np.float32)[..., None]  # k = 0..16 → [-1, 1]
    perm = np.random.default_rng(0).permutation(len(x))
    train, test = perm[:1400], perm[1400:]
    return x[train], d.target[train], x[test], d.target[test]


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("digits_cache")
    xtr, ytr, _, _ = digits
    return dc.train_or_load_digits_classifier(xtr, ytr, cache), cache


def test_test_accuracy_at_least_95_percent(digits, trained):
    clf, _ = trained
    _, _, xte, yte = digits
    assert clf.accuracy(xte, yte) >= 0.95
    pred = clf.predict(xte)
    assert pred.shape == (len(xte),) and pred.dtype == np.int64


def test_cached_classifier_is_loaded_not_retrained(digits, trained, monkeypatch):
    clf, cache = trained
    xtr, ytr, xte, _ = digits
    assert len(list(cache.glob("digits_classifier-*.npz"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("retrained despite a cache hit")

    monkeypatch.setattr(dc, "train_digits_cnn", fail)
    again = dc.train_or_load_digits_classifier(xtr, ytr, cache)
    np.testing.assert_array_equal(again.features(xte), clf.features(xte))
    # Different training data → a different cache key → training is attempted.
    with pytest.raises(AssertionError, match="retrained"):
        dc.train_or_load_digits_classifier(xtr[:-1], ytr[:-1], cache)


def test_digits_fid_separates_real_from_noise(digits, trained):
    clf, _ = trained
    xtr, _, xte, _ = digits
    feats_tr = clf.features(xtr)
    assert feats_tr.shape == (len(xtr), 64)
    real_vs_real = frechet_from_features(feats_tr, clf.features(xte))
    noise = np.random.default_rng(1).uniform(-1, 1, xte.shape).astype(np.float32)
    real_vs_noise = frechet_from_features(feats_tr, clf.features(noise))
    assert real_vs_noise > 10 * real_vs_real


def test_bad_inputs(trained):
    clf, _ = trained
    with pytest.raises(ValueError, match=r"float in \[-1, 1\]"):
        clf.features(np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        clf.features(np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="labels must lie in"):
        dc.train_digits_cnn(np.zeros((4, 8, 8, 1), np.float32), np.array([0, 1, 2, 10]))
