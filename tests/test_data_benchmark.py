"""Smoke test of benchmarks/input_pipeline.py on a tiny synthetic ImageFolder (not timed)."""

import importlib.util
import json
import os

import numpy as np
from PIL import Image

PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "input_pipeline.py")


def _load():
    spec = importlib.util.spec_from_file_location("input_pipeline_benchmark", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_and_writes_json(tmp_path):
    bench = _load()
    out = tmp_path / "result.json"
    argv = ["--num-images", "6", "--image-size", "32", "--batch-size", "3", "--num-batches", "2",
            "--workdir", str(tmp_path / "work"), "--out", str(out)]
    result = bench.main(argv)
    assert json.loads(out.read_text()) == result
    assert result["timed_images"] == 6 and result["images_per_s"] > 0
    files = sorted((tmp_path / "work" / "images" / "train").rglob("*.jpg"))
    assert len(files) == 6
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG" and 400 <= im.width <= 600 and 300 <= im.height <= 450
            assert np.asarray(im).std() > 1  # not a flat image
