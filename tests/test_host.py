"""vdm_jax.parallel.host: the host settings launch/train.py, launch/sample.py and the benchmarks
apply before JAX starts. Each case runs `configure` in a fresh interpreter with a controlled
environment (the test process's own JAX has long started) and checks what it set: the virtual
CPU device count (auto = usable cores, an explicit count as a minimum, the user's XLA_FLAGS or
JAX_NUM_CPU_DEVICES left alone), the XLA flag defaults (the user's value wins), malloc
retention, bad values (one ValueError line), and that a late call changes nothing; finally that
the settings reach JAX: a fresh process sees the configured number of CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vdm_jax.parallel import host

ROOT = Path(__file__).resolve().parent.parent


def _configure(env: dict[str, str], code: str = "host.configure()") -> dict:
    """Run `code` after importing vdm_jax.parallel.host in a clean interpreter; its result and
    the XLA_FLAGS it leaves."""
    script = ("import json, os\nfrom vdm_jax.parallel import host\n"
              f"out = {code}\n"
              "print(json.dumps({'out': out, 'xla_flags': os.environ.get('XLA_FLAGS', '')}))")
    base = {k: v for k, v in os.environ.items()
            if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", host.CPU_DEVICES_ENV,
                         host.MALLOC_ENV)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, env={**base, "PYTHONPATH": str(ROOT), **env})
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _count(flags: str) -> list[str]:
    return [f for f in flags.split() if f.startswith(f"--{host.DEVICE_COUNT_FLAG}=")]


def test_default_is_one_device_and_auto_one_per_usable_core():
    r = _configure({})
    assert _count(r["xla_flags"]) == [f"--{host.DEVICE_COUNT_FLAG}=1"]
    r = _configure({host.CPU_DEVICES_ENV: "auto"})
    n = min(len(os.sched_getaffinity(0)), host.MAX_AUTO_CPU_DEVICES)
    assert _count(r["xla_flags"]) == [f"--{host.DEVICE_COUNT_FLAG}={n}"]
    assert r["out"]["cpu_devices"] == n and r["out"]["late"] is False
    assert r["out"]["malloc"] == "retain"
    # glibc here: mallopt applies (a different libc would report False, not fail)
    assert r["out"]["malloc_retained"] is True
    for name, value in host.XLA_FLAG_DEFAULTS.items():
        assert f"--{name}={value}" in r["xla_flags"].split()


def test_environment_overrides_and_user_flags_win():
    r = _configure({host.CPU_DEVICES_ENV: "3", host.MALLOC_ENV: "default"})
    assert _count(r["xla_flags"]) == [f"--{host.DEVICE_COUNT_FLAG}=3"]
    assert r["out"]["malloc"] == "default" and r["out"]["malloc_retained"] is False
    # The user's XLA_FLAGS keep their device count and any flag they set themselves.
    user = f"--{host.DEVICE_COUNT_FLAG}=5 --xla_cpu_enable_fast_math=false"
    r = _configure({"XLA_FLAGS": user, host.CPU_DEVICES_ENV: "2"})
    assert _count(r["xla_flags"]) == [f"--{host.DEVICE_COUNT_FLAG}=5"]
    assert r["out"]["cpu_devices"] is None
    assert "--xla_cpu_enable_fast_math=false" in r["xla_flags"].split()
    r = _configure({"JAX_NUM_CPU_DEVICES": "4"})
    assert _count(r["xla_flags"]) == []


def test_explicit_count_is_a_minimum():
    flags = f"--{host.DEVICE_COUNT_FLAG}=8"
    r = _configure({"XLA_FLAGS": flags}, "host.configure(cpu_devices=2)")
    assert _count(r["xla_flags"]) == [flags]  # a larger count is kept (use the first 2)
    r = _configure({"XLA_FLAGS": f"--{host.DEVICE_COUNT_FLAG}=1"},
                   "host.configure(cpu_devices=2)")
    assert _count(r["xla_flags"]) == [f"--{host.DEVICE_COUNT_FLAG}=2"]


@pytest.mark.parametrize("env", [{host.CPU_DEVICES_ENV: "zero"}, {host.CPU_DEVICES_ENV: "0"},
                                 {host.MALLOC_ENV: "keep"}])
def test_bad_values_are_one_clear_error(env):
    r = _configure(env)
    (name,) = env
    assert r["error"].startswith("ValueError") and name in r["error"]


def test_late_call_changes_nothing():
    code = ("(__import__('jax').devices(), host.configure(cpu_devices=4))[1]")
    r = _configure({}, code)
    assert r["out"]["late"] is True and r["out"]["cpu_devices"] is None
    assert r["xla_flags"] == ""  # children would otherwise inherit flags JAX never used
    r = _configure({}, "(__import__('jax').devices(), host.configure(strict=True))")
    assert r["error"].startswith("ValueError") and "before JAX" in r["error"]


def test_settings_reach_jax():
    r = _configure({host.CPU_DEVICES_ENV: "3", "JAX_PLATFORMS": "cpu"},
                   "(host.configure(), __import__('jax').device_count())[1]")
    assert r["out"] == 3
