"""The package's architecture: no import cycles (grimp's graph, the one import-linter checks),
and one sampling specification shared by the trainer's config and launch/sample.py."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
from conftest import error_line, xla_flags

from vdm_jax import config as config_lib
from vdm_jax.sampling_spec import SamplingSpec

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    graph = grimp.build_graph("vdm_jax")
    assert len(graph.modules) > 50
    assert _cycles(graph) == []


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    """lint-imports (run by `make test` through `make lint`) fails on a core module importing
    training; the unchanged tree passes."""
    copy = tmp_path / "repo"
    for name in ("vdm_jax", "pyproject.toml"):
        src = ROOT / name
        dst = copy / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dst.write_bytes(src.read_bytes())
    lint = [str(Path(sys.executable).with_name("lint-imports"))]
    env = {**os.environ, "PYTHONPATH": str(copy)}
    clean = subprocess.run(lint, cwd=copy, env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout[-2000:]
    schedules = copy / "vdm_jax" / "core" / "schedules.py"
    schedules.write_text(schedules.read_text() + "\nimport vdm_jax.training.loop  # noqa\n")
    broken = subprocess.run(lint, cwd=copy, env=env, capture_output=True, text=True)
    assert broken.returncode != 0
    assert "vdm_jax.core.schedules -> vdm_jax.training.loop" in broken.stdout


@pytest.mark.parametrize("interval", [(0.1, 0.9), (0.0, 1.0), (0.5, 0.5), (0.9, 0.1),
                                      (-0.1, 0.5), (0.2, 1.5)])
def test_trainer_and_sample_py_accept_the_same_guidance_intervals(interval, tmp_path):
    """The config's sample section and launch/sample.py's flags both build a SamplingSpec: an
    interval one accepts, the other accepts, and both refuse with the same message."""
    config = config_lib.default_config()
    config.sample.guidance_interval = interval
    try:
        config_lib.validate(config)
        trainer_error = None
    except ValueError as e:
        trainer_error = str(e)
    try:
        SamplingSpec(guidance_interval=interval)
        spec_error = None
    except ValueError as e:
        spec_error = str(e)
    assert (trainer_error is None) == (spec_error is None)
    if spec_error:
        assert spec_error in trainer_error
    if interval not in ((0.1, 0.9), (0.5, 0.5)):
        return  # the command line is checked on one accepted and one refused interval
    workdir = tmp_path / "no_run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "sample.py"), f"--workdir={workdir}",
         f"--guidance_interval={interval[0]},{interval[1]}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "XLA_FLAGS": xla_flags(1)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = error_line(proc.stderr)
    if spec_error:  # refused before the run directory is even looked at
        assert spec_error in error
    else:  # accepted: the error is the missing run
        assert "No checkpoints" in error
