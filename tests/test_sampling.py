"""Sampling from a trained run: launch/sample.py resumes after SIGKILL to the samples of an
uninterrupted run, its output goes through launch/evaluate.py (every metric, bits/dim included),
and bad input exits 2 with nothing written."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import error_line, snapshot

from vdm_jax.checkpoints.restore import load_for_inference
from vdm_jax.data.adm_npz import load_samples
from vdm_jax.data.pixels import unit_to_uint8
from vdm_jax.generation.batches import generate_samples
from vdm_jax.generation.images import ImageSampler
from vdm_jax.rundir import RunDir
from vdm_jax.sampling_spec import SamplingSpec

ROOT = Path(__file__).resolve().parents[1]
N, BATCH, CHUNKS = 24, 8, 3
# 200 DDPM steps of the tiny model take ~0.6 s a chunk on 8 CPU devices: the window in which
# the test kills sample.py between its first and last chunk.
STEPS = 200
SAMPLE_ARGS = ("--sampler=ddpm", f"--steps={STEPS}", "--guidance_scale=2",
               "--guidance_interval=0.1,0.9", f"--num_samples={N}", f"--batch_size={BATCH}",
               "--seed=3")
# One BLAS thread: the 2048² eigendecompositions of the Fréchet distance crawl when OpenBLAS
# threads spin on a few shared cores.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _launch(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "launch" / script), *args]


def _run(script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_launch(script, *args), capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny class-conditional digits DiT trained for 2 steps."""
    workdir = tmp_path_factory.mktemp("run")
    proc = _run(
        "train.py", f"--config={ROOT / 'configs' / 'digits_dit.py'}", f"--workdir={workdir}",
        "--config.train.num_steps=2", "--config.model.spec.depth=1",
        "--config.model.spec.hidden_size=32", "--config.model.spec.num_heads=2",
        "--config.train.global_batch_size=16", "--config.sample.num_images=8",
        "--config.sample.num_steps=2", "--config.eval.at_end=False",
        "--config.optim.warmup_steps=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def resumed(run_dir, tmp_path_factory):
    """sample.py SIGKILLed once its first chunk is on disk, then rerun to completion:
    (npz path, chunk files present at the kill, the rerun's CompletedProcess)."""
    out = tmp_path_factory.mktemp("samples") / "s.npz"
    chunks = RunDir.chunks_of(out)
    proc = subprocess.Popen(_launch("sample.py", f"--workdir={run_dir}", f"--out={out}",
                                    *SAMPLE_ARGS),
                            env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(chunks.glob("chunk_*")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    present = sorted(p.name for p in chunks.glob("chunk_*.npz"))
    rerun = _run("sample.py", f"--workdir={run_dir}", f"--out={out}", *SAMPLE_ARGS)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return out, present, rerun


def test_killed_sample_job_resumes_to_the_uninterrupted_samples(resumed, run_dir, tmp_path):
    out, present, rerun = resumed
    assert 1 <= len(present) < CHUNKS, present  # killed midway
    assert f"resuming: {len(present)} of {CHUNKS} chunks" in rerun.stdout
    assert not RunDir.chunks_of(out).exists() and out.with_suffix(".png").is_file()
    batch = load_samples(out)
    assert batch.images.shape == (N, 8, 8, 1) and batch.images.dtype == np.uint8
    assert len({im.tobytes() for im in batch.images}) == N
    np.testing.assert_array_equal(batch.labels, np.arange(N) % 10)  # class-balanced
    settings = json.loads(RunDir.settings_of(out).read_text())
    assert settings["sampler"] == "ddpm" and settings["num_steps"] == settings["nfe"] == STEPS
    assert settings["guidance_scale"] == 2.0 and settings["guidance_interval"] == [0.1, 0.9]
    assert settings["ema"] == "ema_0p999" and settings["checkpoint_step"] == 2
    assert settings["num_samples"] == N and settings["seed"] == 3
    assert settings["workdir"] == str(run_dir.resolve())

    # The same settings in one uninterrupted call give the same arrays.
    restored = load_for_inference(run_dir)
    spec = SamplingSpec(sampler="ddpm", num_steps=STEPS, guidance_scale=2.0,
                        guidance_interval=(0.1, 0.9), seed=3)
    kwargs = dict(num_samples=N, batch_size=BATCH, progress=False)
    ref = generate_samples(restored, spec, out=tmp_path / "ref.npz", **kwargs)
    expected = load_samples(ref.npz)
    np.testing.assert_array_equal(batch.images, expected.images)
    np.testing.assert_array_equal(batch.labels, expected.labels)
    # A finished job is not redone; a finished file of other settings is never overwritten.
    mtime = ref.npz.stat().st_mtime_ns
    generate_samples(restored, spec, out=ref.npz, **kwargs)
    assert ref.npz.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="holds samples of other settings"):
        generate_samples(restored, spec.replace(seed=4), out=ref.npz, **kwargs)
    assert ref.npz.stat().st_mtime_ns == mtime


def test_sample_then_evaluate_reports_every_metric(resumed, run_dir, tmp_path,
                                                  digits_classifier_cache):
    out, _, _ = resumed
    ref = tmp_path / "ref.npz"
    built = _run("build_reference.py", "--dataset=digits", "--split=eval", f"--max_images={N}",
                 f"--num_stored_images={N}", "--random_inception", f"--batch_size={N}",
                 f"--out={ref}")
    assert built.returncode == 0, built.stderr[-3000:]
    results = tmp_path / "results.json"
    proc = _run("evaluate.py", f"--samples={out}", f"--ref={ref}", "--random_inception",
                "--digits", f"--workdir={digits_classifier_cache}", f"--bpd_workdir={run_dir}",
                "--bpd_passes=1", f"--batch_size={N}", f"--out={results}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in ("FID", "sFID", "Inception Score", "precision", "recall", "digits-FID",
                "class accuracy", "held-out bits/dim", "diffusion term", "baseline: uniform"):
        assert row in proc.stdout, row
    saved = json.loads(results.read_text())
    metrics, settings = saved["metrics"], saved["settings"]
    for key in ("fid", "sfid", "inception_score", "inception_score_std", "precision", "recall",
                "digits_fid", "digits_fid_floor", "class_accuracy", "bpd", "bpd_prior",
                "bpd_reconstruction", "bpd_diffusion", "bpd_baseline_independent_categorical",
                "bpd_baseline_uniform"):
        assert np.isfinite(metrics[key]), key
    assert metrics["unavailable"] == {} and metrics["num_samples"] == N
    assert metrics["bpd"] == pytest.approx(
        metrics["bpd_prior"] + metrics["bpd_reconstruction"] + metrics["bpd_diffusion"])
    assert metrics["bpd_baseline_uniform"] == pytest.approx(np.log2(17))
    # Every setting behind the figures: sampling, reference, bits/dim.
    assert settings["sampler"] == "ddpm" and settings["num_steps"] == STEPS
    assert settings["guidance_scale"] == 2.0 and settings["ema"] == "ema_0p999"
    assert settings["reference"] == str(ref.resolve())
    assert settings["reference_settings"]["num_images"] == N
    assert settings["bpd"]["passes"] == 1 and settings["bpd"]["checkpoint_step"] == 2
    assert settings["bpd"]["workdir"] == str(run_dir.resolve())


@pytest.mark.parametrize("case", ["no_checkpoints", "unknown_sampler", "bad_eta"])
def test_bad_input_exits_2_and_writes_nothing(case, run_dir, tmp_path):
    out = tmp_path / "out" / "s.npz"
    if case == "no_checkpoints":
        workdir = tmp_path / "empty"
        args, expected = [f"--workdir={workdir}"], re.escape(str(workdir / "checkpoints"))
    elif case == "unknown_sampler":
        args, expected = [f"--workdir={run_dir}", "--sampler=bogus"], "unknown sampler 'bogus'"
    else:  # caught when the sampler is traced, before any file exists
        args, expected = [f"--workdir={run_dir}", "--sampler=ddim", "--eta=2"], r"eta in \[0, 1\]"
    before = snapshot(run_dir)
    proc = _run("sample.py", *args, f"--out={out}", "--num_samples=8", "--batch_size=8",
                "--steps=2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert re.search(expected, error_line(proc.stderr)), proc.stderr[-3000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "empty").exists()
    assert snapshot(run_dir) == before


def test_image_sampler_is_generate_then_decode_then_uint8():
    """generation.images.ImageSampler, the one path from samples to host pixels: fetch(draw) is
    unit_to_uint8 of the decoded samples (decode skipped for a pixel model), draw also hands on
    the sampler's NFE, and __call__ is the two halves in order."""
    z = np.random.default_rng(0).uniform(-1.2, 1.2, (3, 4, 4, 1)).astype(np.float32)
    generate = lambda params, labels, rng: (jnp.asarray(z) * params, jnp.int32(7))  # (z, NFE)
    decode = lambda x: jnp.tanh(2 * x)
    half = jnp.asarray(z) * 0.5
    for dec, expected in ((None, half), (decode, jnp.tanh(2 * half))):
        images = ImageSampler(generate, dec, 17)
        out = images(jnp.float32(0.5), None, None)
        assert out.dtype == np.uint8 and out.shape == z.shape
        np.testing.assert_array_equal(out, unit_to_uint8(np.asarray(expected, np.float32), 17))
        drawn, nfe = images.draw(jnp.float32(0.5), None, None)
        np.testing.assert_array_equal(out, images.fetch(drawn))
        assert int(nfe) == 7  # the sampler's count passes through untouched


def test_autoguidance_from_the_command_line(run_dir, tmp_path):
    """--guidance=auto: a run guided by itself is the unguided run (D + w (D − D) = D), and a
    guide of another prediction is refused in one line, exit 2, nothing written."""
    common = (f"--workdir={run_dir}", "--sampler=euler", "--steps=4", "--num_samples=8",
              "--batch_size=8", "--seed=1")
    plain = _run("sample.py", *common, "--guidance_scale=1", f"--out={tmp_path / 'plain.npz'}")
    assert plain.returncode == 0, plain.stderr[-3000:]
    auto = _run("sample.py", *common, "--guidance=auto", "--guidance_scale=1.5",
                f"--guide_workdir={run_dir}", f"--out={tmp_path / 'auto.npz'}")
    assert auto.returncode == 0, auto.stderr[-3000:]
    a = load_samples(tmp_path / "auto.npz").images
    b = load_samples(tmp_path / "plain.npz").images
    assert np.max(np.abs(a.astype(int) - b.astype(int))) <= 1
    settings = json.loads((tmp_path / "auto.json").read_text())
    assert settings["guidance"] == "auto" and settings["guide"]["workdir"] == str(run_dir)
    other = tmp_path / "eps_run"
    proc = _run("train.py", f"--config={ROOT / 'configs' / 'digits_dit.py'}", f"--workdir={other}",
                "--config.train.num_steps=1", "--config.model.spec.depth=1",
                "--config.model.spec.hidden_size=32", "--config.model.spec.num_heads=2",
                "--config.train.global_batch_size=16", "--config.sample.num_images=8",
                "--config.sample.num_steps=2", "--config.eval.at_end=False",
                "--config.model.prediction=eps", "--config.train.checkpoint_every=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run("sample.py", *common, "--guidance=auto", "--guidance_scale=1.5",
                f"--guide_workdir={other}", f"--out={tmp_path / 'refused.npz'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "prediction 'eps'" in error_line(proc.stderr), proc.stderr[-3000:]
    assert not (tmp_path / "refused.npz").exists()
