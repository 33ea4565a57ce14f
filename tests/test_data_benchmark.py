"""Smoke test of benchmarks/input_pipeline.py on a tiny synthetic ImageFolder (not timed)."""

import importlib
import json

import numpy as np
from PIL import Image


def _load():
    return importlib.import_module("benchmarks.input_pipeline")


def test_benchmark_runs_and_writes_json(tmp_path):
    bench = _load()
    out = tmp_path / "result.json"
    argv = ["--num-images", "6", "--image-size", "32", "--batch-size", "3", "--num-batches", "2",
            "--workdir", str(tmp_path / "work"), "--out", str(out)]
    result = bench.main(argv)
    assert json.loads(out.read_text()) == result
    assert "date" in result["environment"] and "command" in result["environment"]
    (row,) = result["results"]
    assert row["timed_images"] == 6 and row["images_per_s"] > 0
    files = sorted((tmp_path / "work" / "images" / "train").rglob("*.jpg"))
    assert len(files) == 6
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG" and 400 <= im.width <= 600 and 300 <= im.height <= 450
            assert np.asarray(im).std() > 1  # not a flat image
