"""Every launch script goes through one bad-input path (vdm_jax.cli.launch): an absent input file,
a junk input file and an unwritable output path each give one `error:` line, exit status 2, no
traceback and nothing written, and the output path is checked first (before any input is read
or anything computed: the unwritable-output cases name an absent input too, and the error must
name the output). `--help` exits 0 and lists the script's flags (and `--config` where it takes
one). Each case is a real subprocess on the command line a user types.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import error_line, snapshot, xla_flags

REPO = Path(__file__).resolve().parents[1]
DIGITS = str(REPO / "configs" / "digits_dit.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VDM_JAX_TRACEBACK"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(1), PYTHONPATH=str(REPO))
    return env


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch" / f"{name}.py"), *args],
                          env=_env(), capture_output=True, text=True, timeout=300, cwd=REPO)


def _inputs(tmp: Path) -> dict[str, str]:
    """Paths the cases use: absent ones, junk files, and a regular file to put outputs under."""
    (tmp / "junk.py").write_text("this is not python (\n")
    for name in ("junk.npz", "junk.pth", "junk.safetensors"):
        (tmp / name).write_bytes(b"not an archive at all\n" * 8)
    (tmp / "file").write_text("a regular file, not a directory\n")
    return {"absent": str(tmp / "absent"), "junk": str(tmp), "file": str(tmp / "file")}


# script -> {case: (arguments, a word the error line must hold)}; `{absent}` / `{junk}` /
# `{file}` are filled from `_inputs`. The unwritable-output cases give absent inputs too.
CASES: dict[str, dict[str, tuple[list[str], str]]] = {
    "train": {
        "absent": (["--config={absent}.py", "--workdir={absent}_run"], "no such file"),
        "junk": (["--config={junk}/junk.py", "--workdir={absent}_run"], "SyntaxError"),
        "unwritable": (["--config={absent}.py", "--workdir={file}/run"], "workdir"),
    },
    "sample": {
        "absent": (["--workdir={absent}", "--out={absent}.npz"], "absent"),
        "junk": (["--workdir={junk}", "--out={absent}.npz"], "checkpoint"),
        "unwritable": (["--workdir={absent}", "--out={file}/x.npz"], "--out"),
    },
    "evaluate": {
        "absent": (["--samples={absent}.npz", "--digits"], "does not exist"),
        "junk": (["--samples={junk}/junk.npz", "--digits"], "not a readable .npz"),
        "unwritable": (["--samples={absent}.npz", "--digits", "--out={file}/m.json"], "--out"),
    },
    "build_reference": {
        "absent": (["--dataset=image_folder", "--image_folder={absent}", "--image_size=8",
                    "--random_inception", "--out={absent}_ref.npz"], "absent"),
        "junk": (["--inception_weights={junk}/junk.npz", "--out={absent}_ref.npz"],
                 "not a readable .npz"),
        "unwritable": (["--inception_weights={absent}.npz", "--out={file}/ref.npz"], "--out"),
    },
    "convert_inception": {
        "absent": (["--pth={absent}.pth", "--out={absent}.npz"], "no such file"),
        "junk": (["--pth={junk}/junk.pth", "--out={absent}.npz"], "junk.pth"),
        "unwritable": (["--pth={absent}.pth", "--out={file}/w.npz"], "--out"),
    },
    "import_checkpoint": {
        "absent": (["--format=dit", "--checkpoint={absent}.pt", "--workdir={absent}_run",
                    "--config.autoencoder.weights={absent}_vae"], "absent"),
        "junk": (["--format=dit", "--checkpoint={junk}/junk.safetensors",
                  "--workdir={absent}_run", "--config.autoencoder.weights={absent}_vae"],
                 "junk.safetensors"),
        "unwritable": (["--format=dit", "--checkpoint={absent}.pt", "--workdir={file}/run",
                        "--config.autoencoder.weights={absent}_vae"], "workdir"),
    },
    "encode_latents": {
        "absent": (["--config={absent}.py", "--out={absent}_latents"], "no such file"),
        "junk": (["--config={junk}/junk.py", "--out={absent}_latents"], "SyntaxError"),
        "unwritable": (["--config={absent}.py", "--out={file}/latents"], "--out"),
    },
    "compile": {
        "absent": (["--config={absent}.py", "--topology=v5p:2x2x1"], "no such file"),
        "junk": (["--config={junk}/junk.py", "--topology=v5p:2x2x1"], "SyntaxError"),
        "unwritable": (["--config={absent}.py", "--topology=v5p:2x2x1",
                        "--save={file}/step.bin"], "--save"),
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("script", list(CASES))
def test_every_launch_script_refuses_bad_input_with_one_line(tmp_path, script):
    """Absent input, junk input, unwritable output: one `error:` line, exit 2, nothing written;
    the output path is checked before anything else."""
    paths = _inputs(tmp_path)
    before = snapshot(tmp_path)
    for case, (args, expected) in CASES[script].items():
        proc = _script(script, *(a.format(**paths) for a in args))
        what = f"{script} {case}: rc {proc.returncode}\n{proc.stderr[-3000:]}"
        assert proc.returncode == 2, what
        assert expected in error_line(proc.stderr), what
        assert snapshot(tmp_path) == before, f"{what}\nwrote something"


@pytest.mark.parametrize("script", ["train", "convert_inception", "compile"])
def test_help_exits_0_and_lists_the_flags(script):
    proc = _script(script, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage: python launch/" in proc.stdout
    own = {"train": "--workdir", "convert_inception": "--out", "compile": "--topology"}[script]
    assert own in proc.stdout
    assert ("--config.<section>.<key>" in proc.stdout) == (script != "convert_inception")


def test_a_script_without_a_config_refuses_config_flags(tmp_path):
    proc = _script("sample", f"--workdir={tmp_path}", "--config.seed=1")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1].startswith("error: this script takes no --config")


# ------------------------------------------------------------------ in-process bad input
def _one_line_exit_2(capsys: pytest.CaptureFixture, fn, match: str) -> None:
    """fn() under the launch scripts' handler: exit 2, one `error:` line matching `match`."""
    from vdm_jax.cli import exit_on_bad_input

    os.environ.pop("VDM_JAX_TRACEBACK", None)
    with pytest.raises(SystemExit) as exited, exit_on_bad_input():
        fn()
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1, err
    assert re.search(match, err), err


def _tree(root: Path) -> Path:
    from PIL import Image

    for label in ("cat", "dog"):
        (root / "train" / label).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "train" / label / "a.png")
    return root


@pytest.mark.parametrize("loop", ["two_links", "class_links_to_itself", "class_links_up"])
def test_image_folder_symlink_loops_are_one_line(tmp_path, capsys, loop):
    from vdm_jax.data import image_folder

    root = _tree(tmp_path / "tree")
    cat = root / "train" / "cat"
    if loop == "two_links":
        (cat / "b.png").symlink_to(cat / "c.png")
        (cat / "c.png").symlink_to(cat / "b.png")
        expected = r"c?b?\.png is a symbolic link loop"
    elif loop == "class_links_to_itself":
        (root / "train" / "bird").symlink_to(root / "train" / "bird")
        expected = r"bird is a symbolic link loop"
    else:
        (root / "train" / "up").symlink_to(root / "train")
        expected = r"up links to a folder above it"
    _one_line_exit_2(capsys, lambda: image_folder.listing(str(root)), expected)


def test_image_folder_names_dangling_links_and_empty_classes(tmp_path, caplog):
    import logging

    from vdm_jax.data import image_folder

    root = _tree(tmp_path / "tree")
    (root / "train" / "cat" / "gone.png").symlink_to(tmp_path / "absent.png")
    (root / "train" / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger=image_folder.__name__):
        builder = image_folder.load_builder(str(root), str(tmp_path / "tfds"))
    assert builder.info.features["label"].names == ["cat", "dog", "empty"]
    assert "gone.png, a symbolic link to" in caplog.text and "does not exist" in caplog.text
    assert re.search(r"empty holds no image file; it stays class 'empty'", caplog.text)


@pytest.mark.parametrize("case", ["directory", "text_named_npz", "junk_pth", "other_network"])
def test_bad_inception_weights_are_one_line(tmp_path, capsys, case):
    """--inception_weights: a directory, a text file named .npz, a junk .pth (torch or not),
    another network's arrays: one line naming the file and the problem."""
    import importlib.util

    import numpy as np

    from vdm_jax.evaluation.features import load_eval_inception

    path = tmp_path / {"directory": "w", "text_named_npz": "w.npz", "junk_pth": "w.pth",
                       "other_network": "w.npz"}[case]
    if case == "directory":
        path.mkdir()
        expected = "a directory: give the weights file itself"
    elif case == "text_named_npz":
        path.write_text("these are not weights\n")
        expected = "not a readable .npz of Inception weights"
    elif case == "junk_pth":
        path.write_bytes(b"\x80junk" * 10)
        expected = ("not a readable PyTorch state dict" if importlib.util.find_spec("torch")
                    else "needs PyTorch")
    else:
        np.savez(path, **{"conv/kernel": np.zeros((3, 3))})
        expected = "conv/kernel"
    _one_line_exit_2(capsys, lambda: load_eval_inception(str(path)), expected)
