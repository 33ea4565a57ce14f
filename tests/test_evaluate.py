"""Whole evaluations: Inception metrics with random weights, digits metrics, CLI errors, JSON."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, snapshot
from threadpoolctl import threadpool_limits

from vdm_jax.data import pixels
from vdm_jax.data.adm_npz import load_reference, save_reference, save_samples
from vdm_jax.data.digits import load_builder
from vdm_jax.evaluation import digits as digits_lib
from vdm_jax.evaluation import evaluate as ev
from vdm_jax.evaluation import inception_metrics
from vdm_jax.evaluation import reference as reference_lib
from vdm_jax.evaluation import results as results_lib
from vdm_jax.nn.encoders.inception import random_inception
from vdm_jax.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
N = 12  # Inception at 299² costs ~6 GFLOP per image on CPU; IS needs ≥ 10 images (10 splits)


@pytest.fixture(scope="module", autouse=True)
def single_threaded_blas():
    # The 2048² eigendecompositions of the Fréchet distance take ~4 s single-threaded but 20–30 s
    # when OpenBLAS threads spin on a few oversubscribed cores (other processes, test workers).
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture(scope="module")
def inception():
    return random_inception(seed=0)


@pytest.fixture(scope="module")
def images():
    """Two different sets of N uint8 RGB images (a: smooth blobs, b: uniform noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    centres = rng.uniform(3, 13, (N, 2, 3))
    blobs = np.exp(-((yy[None, ..., None] - centres[:, None, None, 0]) ** 2
                     + (xx[None, ..., None] - centres[:, None, None, 1]) ** 2) / 12.0)
    a = np.round(255 * blobs).astype(np.uint8)                      # (N, 16, 16, 3)
    b = rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)
    return a, b


@pytest.fixture(scope="module")
def reference(images, inception, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.npz"
    return reference_lib.build_reference(images[0], inception, path, batch_size=N)


def test_pixel_conventions_round_trip():
    for k in (17, 256):
        levels = np.arange(k)
        x = (2 * (levels + 0.5) / k - 1).astype(np.float32)          # the pipeline's scaling
        np.testing.assert_array_equal(pixels.unit_to_levels(x, k), levels)
        v = pixels.unit_to_uint8(x, k)
        assert v.dtype == np.uint8 and v[0] == 0 and v[-1] == 255
        np.testing.assert_array_equal(pixels.uint8_to_levels(v, k), levels)
        # ADM's round((x + 1)·127.5) of level centres maps back to the same levels too.
        adm = np.round((x.astype(np.float64) + 1) * 127.5).astype(np.uint8)
        np.testing.assert_array_equal(pixels.uint8_to_levels(adm, k), levels)
    np.testing.assert_array_equal(pixels.levels_to_uint8(np.arange(256), 256), np.arange(256))


def test_build_reference_writes_adm_batch_and_streams(reference, images, inception, tmp_path):
    ref = load_reference(reference.path)
    assert ref.mu.shape == (2048,) and ref.sigma.shape == (2048, 2048)
    assert ref.mu_s.shape == (2023,) and ref.sigma_s.shape == (2023, 2023)
    np.testing.assert_array_equal(ref.images, images[0])
    np.testing.assert_array_equal(ref.mu, reference.mu)
    # Streaming in uneven chunks gives the same statistics; only the first images are stored.
    chunks = iter([images[0][:7], images[0][7:]])
    streamed = reference_lib.build_reference(chunks, inception, tmp_path / "s.npz", batch_size=N,
                                  num_stored_images=5)
    np.testing.assert_allclose(streamed.mu, ref.mu, rtol=1e-5, atol=1e-6)
    scale = np.abs(ref.sigma).max()
    np.testing.assert_allclose(streamed.sigma, ref.sigma, atol=1e-5 * scale)
    np.testing.assert_array_equal(load_reference(tmp_path / "s.npz").images, images[0][:5])


def test_identical_samples_give_zero_fid_and_full_precision_recall(reference, images, inception,
                                                                    tmp_path):
    # A reference without mu_s/sigma_s (as some ADM batches): sFID is reported as unavailable.
    no_spatial = save_reference(tmp_path / "r.npz", reference.mu, reference.sigma,
                                images=reference.images)
    m = inception_metrics.sample_metrics(images[0], load_reference(no_spatial), inception,
                                         batch_size=N)
    # d² = 2 Tr Σ − 2 Tr Σ up to round-off (eigenvalues of a rank-11 2048² covariance).
    assert abs(m["fid"]) <= 1e-5 * np.trace(reference.sigma)
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["sfid"] is None and "no mu_s/sigma_s" in m["unavailable"]["sfid"]
    assert "n/a (" in results_lib.format_table(m)


def test_evaluation_gives_every_metric_and_merges_settings(reference, images, inception,
                                                           tmp_path):
    samples = save_samples(tmp_path / "samples.npz", images[1], np.arange(N) % 3)
    sampling = {"sampler": "ddpm", "steps": 64, "guidance_scale": 1.5,
                "guidance_interval": [0.1, 0.9], "ema": True, "num_samples": N,
                "checkpoint_step": 123}
    RunDir.settings_of(samples).write_text(json.dumps(sampling))
    metrics, settings, path = ev.evaluate_samples_file(
        samples, ref_path=reference.path, inception=(inception, "random"), batch_size=N)
    for key in ("fid", "sfid", "inception_score", "inception_score_std", "precision", "recall"):
        assert np.isfinite(metrics[key]), key
    assert metrics["fid"] > 0 and metrics["sfid"] > 0 and metrics["inception_score"] >= 1
    assert 0 <= metrics["precision"] <= 1 and 0 <= metrics["recall"] <= 1
    assert metrics["unavailable"] == {}
    assert path == tmp_path / "samples.metrics.json"
    saved = json.loads(path.read_text())
    assert saved["settings"] == json.loads(json.dumps(settings))
    for key, value in sampling.items():
        assert saved["settings"][key] == value
    assert saved["settings"]["reference"] == str(reference.path.resolve())
    assert saved["settings"]["fid_preprocessing"] == "adm"  # the default, recorded
    assert saved["settings"]["reference_image_shape"] == list(images[1].shape[1:])
    assert saved["settings"]["precision_recall_k"] == 3
    assert saved["metrics"]["fid"] == pytest.approx(metrics["fid"])
    table = results_lib.format_table(metrics)
    assert "FID" in table and "precision (k=3)" in table and "±" in table


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory, digits_classifier_cache):
    """data_dir, classifier cache, and the raw test/train splits (levels 0..16, labels)."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cache = digits_classifier_cache
    builder = load_builder(data_dir)
    splits = {}
    for split in ("train", "test"):
        src = builder.as_data_source(split)
        ex = [src[i] for i in range(len(src))]
        splits[split] = (np.stack([e["image"] for e in ex]), np.array([e["label"] for e in ex]))
    return data_dir, cache, splits


def test_reference_images_from_data_are_exact_8bit_levels(digits):
    data_dir, _, splits = digits
    cfg = {"name": "digits", "data_dir": data_dir}
    test = reference_lib.reference_images_from_data(cfg, "eval")
    np.testing.assert_array_equal(test, pixels.levels_to_uint8(splits["test"][0], 17))
    train = reference_lib.reference_images_from_data(cfg, "train", max_images=20, seed=1)
    assert train.shape == (20, 8, 8, 1)
    train_set = {im.tobytes() for im in pixels.levels_to_uint8(splits["train"][0], 17)}
    assert all(im.tobytes() in train_set for im in train)
    with pytest.raises(ValueError, match="split must be"):
        next(reference_lib.iter_reference_images(cfg, "validation"))


def test_digits_metrics_of_real_images_and_noise(digits):
    data_dir, cache, splits = digits
    test_levels, test_labels = splits["test"]
    m = digits_lib.digits_metrics(pixels.levels_to_uint8(test_levels, 17), test_labels, cache,
                          data_dir=data_dir)
    assert m["class_accuracy"] >= 0.9
    floor = m["digits_fid_floor"]
    assert floor > 0 and abs(m["digits_fid"]) < 1e-6 * floor  # the test split against itself

    # Real images the reference never saw (a train subset) sit near the real-vs-real floor.
    train_levels, train_labels = splits["train"]
    rows = np.random.default_rng(7).permutation(len(train_levels))[: len(test_levels)]
    held = digits_lib.digits_metrics(pixels.levels_to_uint8(train_levels[rows], 17),
                                     train_labels[rows], cache, data_dir=data_dir)
    assert 0.5 * held["digits_fid_floor"] < held["digits_fid"] < 2 * held["digits_fid_floor"]
    assert held["class_accuracy"] >= 0.9

    noise = np.random.default_rng(0).integers(0, 256, (len(test_levels), 8, 8, 1), np.uint8)
    bad = digits_lib.digits_metrics(noise, None, cache, data_dir=data_dir)
    assert bad["digits_fid"] > 10 * bad["digits_fid_floor"]
    assert bad["class_accuracy"] is None and "unconditional" in bad["unavailable"]["class_accuracy"]
    with pytest.raises(ValueError, match=r"\(N, 8, 8, 1\)"):
        digits_lib.digits_metrics(np.zeros((4, 16, 16, 3), np.uint8), None, cache,
                                  data_dir=data_dir)


# --------------------------------------------------------------------------- CLI


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VDM_JAX_INCEPTION_WEIGHTS"}
    return subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_cli_digits_mode_writes_table_and_merged_json(digits, tmp_path):
    data_dir, cache, splits = digits
    test_levels, test_labels = splits["test"]
    samples = save_samples(tmp_path / "s.npz", pixels.levels_to_uint8(test_levels, 17), test_labels)
    RunDir.settings_of(samples).write_text(json.dumps({"sampler": "ddim", "steps": 8}))
    out = tmp_path / "results" / "r.json"
    proc = _run_cli(f"--samples={samples}", "--digits", f"--workdir={cache}",
                    f"--data_dir={data_dir}", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    assert "digits-FID" in proc.stdout and "class accuracy" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["settings"]["sampler"] == "ddim" and saved["settings"]["steps"] == 8
    assert saved["settings"]["num_samples"] == len(test_levels)
    assert saved["metrics"]["class_accuracy"] >= 0.9


@pytest.mark.parametrize("case", ["ref_without_mu", "float_samples", "flat_samples",
                                  "no_weights", "other_resolution", "other_fid_mode",
                                  "junk_samples", "truncated_reference"])
def test_cli_bad_input_exits_2_with_a_short_message(case, tmp_path):
    """launch/evaluate.py with a reference without mu/sigma, samples of the wrong dtype or shape,
    or absent Inception weights: exit 2, one `error:` line naming the file and the fix, no
    traceback, and nothing written."""
    samples, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    good = np.zeros((N, 8, 8, 3), np.uint8)
    np.savez(samples, arr_0=good)
    np.savez(ref, mu=np.zeros(4), sigma=np.eye(4), arr_0=good)
    args = [f"--samples={samples}", f"--ref={ref}"]
    if case == "ref_without_mu":
        np.savez(ref, mu_s=np.zeros(4), sigma_s=np.eye(4), arr_0=good)
        expected = r"ref\.npz lacks mu, sigma"
    elif case == "float_samples":
        np.savez(samples, arr_0=good.astype(np.float32))
        expected = r"arr_0 must be uint8.*got dtype float32"
    elif case == "flat_samples":
        np.savez(samples, arr_0=np.zeros((N, 192), np.uint8))
        expected = r"must be NHWC.*got shape \(12, 192\)"
    elif case == "no_weights":
        args.append(f"--inception_weights={tmp_path / 'absent.npz'}")
        expected = r"absent\.npz, which does not exist.*pt_inception-2015-12-05"
    elif case == "other_resolution":  # CIFAR-like samples against a digits-like reference
        np.savez(samples, arr_0=np.zeros((N, 32, 32, 3), np.uint8))
        np.savez(ref, mu=np.zeros(4), sigma=np.eye(4), arr_0=np.zeros((N, 8, 8, 1), np.uint8))
        expected = r"samples are 32×32×3 images but reference batch .*ref\.npz holds 8×8×1"
    elif case == "other_fid_mode":
        RunDir.settings_of(ref).write_text(json.dumps({"fid_mode": "pytorch_fid"}))
        args.append("--fid_mode=adm")
        expected = r"built with FID preprocessing 'pytorch_fid'"
    elif case == "junk_samples":
        samples.write_bytes(b"not an npz at all" * 10)
        expected = r"samples\.npz is not a readable \.npz file"
    else:
        ref.write_bytes(ref.read_bytes()[:100])
        expected = r"ref\.npz is not a readable \.npz file"
    before = snapshot(tmp_path)
    proc = _run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert re.search(expected, error_line(proc.stderr)), proc.stderr
    assert snapshot(tmp_path) == before
