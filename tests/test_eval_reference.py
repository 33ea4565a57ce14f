"""ADM .npz reference and sample batches: round trips and clear errors."""

import numpy as np
import pytest

from vdm_jax.data.adm_npz import load_reference, load_samples, save_reference, save_samples


def test_reference_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(8), np.eye(8) * 2
    mu_s, sigma_s = rng.standard_normal(5), np.eye(5)
    images = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
    path = save_reference(tmp_path / "ref.npz", mu, sigma, mu_s, sigma_s, images)
    ref = load_reference(path)
    np.testing.assert_array_equal(ref.mu, mu)
    np.testing.assert_array_equal(ref.sigma, sigma)
    np.testing.assert_array_equal(ref.mu_s, mu_s)
    np.testing.assert_array_equal(ref.sigma_s, sigma_s)
    np.testing.assert_array_equal(ref.images, images)
    assert load_reference(path, load_images=False).images is None
    # ADM's own reference files are plain np.savez output with these keys.
    np.savez(tmp_path / "adm.npz", mu=mu, sigma=sigma)
    adm = load_reference(tmp_path / "adm.npz")
    assert adm.mu_s is None and adm.sigma_s is None and adm.images is None


def test_reference_without_mu_sigma_names_file_and_keys(tmp_path):
    path = tmp_path / "bad_ref.npz"
    np.savez(path, mu_s=np.zeros(3), sigma_s=np.eye(3), arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"bad_ref\.npz lacks mu, sigma"):
        load_reference(path)
    np.savez(path, mu=np.zeros(3), sigma=np.eye(3), mu_s=np.zeros(3))
    with pytest.raises(ValueError, match="sigma_s missing"):
        load_reference(path)
    np.savez(path, mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match=r"mu/sigma must have shapes"):
        load_reference(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reference(tmp_path / "absent.npz")


def test_sample_round_trip_and_validation(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(6) % 3
    batch = load_samples(save_samples(tmp_path / "s.npz", images, labels))
    np.testing.assert_array_equal(batch.images, images)
    np.testing.assert_array_equal(batch.labels, labels)
    assert load_samples(save_samples(tmp_path / "u.npz", images)).labels is None

    np.savez(tmp_path / "float.npz", arr_0=images.astype(np.float32))
    with pytest.raises(ValueError, match=r"float\.npz: arr_0 must be uint8"):
        load_samples(tmp_path / "float.npz")
    np.savez(tmp_path / "nchw.npz", arr_0=np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"3 or 1 channels.*channels-first"):
        load_samples(tmp_path / "nchw.npz")
    np.savez(tmp_path / "flat.npz", arr_0=np.zeros((2, 64), np.uint8))
    with pytest.raises(ValueError, match="NHWC"):
        load_samples(tmp_path / "flat.npz")
    np.savez(tmp_path / "noarr.npz", images=images)
    with pytest.raises(ValueError, match="has no arr_0"):
        load_samples(tmp_path / "noarr.npz")
    np.savez(tmp_path / "badlab.npz", arr_0=images, arr_1=np.zeros(5, np.int64))
    with pytest.raises(ValueError, match="arr_1 must be integer labels"):
        load_samples(tmp_path / "badlab.npz")
