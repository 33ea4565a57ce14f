"""Does the trainer run at the speed benchmarks/train_step.py reports? launch/train.py on synthetic
data against the benchmark, in alternating processes.

    .venv/bin/python -m benchmarks.trainer_speed --rounds=3 --steps=4 \
        --out results/trainer_speed.json

Each round runs, one after the other and in alternating order:

  trainer     `launch/train.py --config=configs/synthetic_dit.py` (DiT-S/2, 32×32×4 synthetic
              data, 1000 classes, the trainer's defaults; --config.<key>=<value> overrides via
              --override) in a fresh run directory for --warmup + --steps steps, logging every
              step: the step time of step k is global batch ÷ the images/s it logs in
              metrics.jsonl (wall time between consecutive steps' logs: the data pipeline,
              host transfers, logging and hooks included; compilation excluded). The first
              --warmup steps are dropped.
  benchmark   `python -m benchmarks.train_step` with the same model, shape and batch and its
              defaults (the trainer's): --warmup untimed steps, --steps timed ones, the median.

Reported: both medians over all rounds, their ratio (trainer ÷ benchmark; 1 = the benchmark
times what the trainer runs), the per-round ratios and the load average. The acceptance of the
issue is |ratio − 1| ≤ 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import report

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "synthetic_dit.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_trainer(args: argparse.Namespace) -> dict[str, Any]:
    """launch/train.py for warmup + steps steps; per-step seconds from its metrics.jsonl."""
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={args.config}",
               f"--workdir={workdir}", f"--config.train.num_steps={args.warmup + args.steps}",
               f"--config.train.global_batch_size={args.batch}", "--config.train.log_every=1",
               *(f"--config.{o}" for o in args.override)]
        before = report.load_avg()
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"launch/train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
        logged = [json.loads(line) for line in lines]
    seconds = [args.batch / m["images_per_sec"] for m in logged if m["step"] > args.warmup]
    return {"walls": seconds, "load_before": before, "load_after": report.load_avg(),
            "command": " ".join(cmd[1:])}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """benchmarks.train_step with its (the trainer's) defaults; its timed step seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "train_step.json"
        cmd = [sys.executable, "-m", "benchmarks.train_step", f"--model={args.model}",
               f"--batch={args.batch}", f"--steps={args.steps}", f"--warmup={args.warmup}",
               "--peak_size=0", f"--input_size={args.input_size}",
               f"--in_channels={args.in_channels}", f"--num_classes={args.num_classes}",
               f"--out={out}"]
        before = report.load_avg()
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"benchmarks.train_step failed ({proc.returncode}):\n"
                             f"{proc.stderr[-4000:]}")
        (row,) = json.loads(out.read_text())["results"]
    return {"walls": row["step_walls_s"], "median_s": row["step_time"]["median_s"], "row": row,
            "load_before": before, "load_after": report.load_avg(), "command": " ".join(cmd[1:])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG), help="the trainer's config module")
    p.add_argument("--override", action="append", default=[],
                   help="extra trainer override key=value (repeatable), e.g. model.spec=...")
    p.add_argument("--model", default="DiT-S/2", help="the benchmark's --model (the config's)")
    p.add_argument("--input_size", type=int, default=32)
    p.add_argument("--in_channels", type=int, default=4)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=4, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per process")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    rounds = []
    for i in range(args.rounds):
        order = ("trainer", "benchmark") if i % 2 == 0 else ("benchmark", "trainer")
        rounds.append({side: (run_trainer if side == "trainer" else run_benchmark)(args)
                       for side in order})
    trainer = [t for r in rounds for t in r["trainer"]["walls"]]
    bench = [t for r in rounds for t in r["benchmark"]["walls"]]
    result_row = {
        "trainer_s": statistics.median(trainer), "benchmark_s": statistics.median(bench),
        "trainer_all_s": trainer, "benchmark_all_s": bench,
        "round_ratios": [statistics.median(r["trainer"]["walls"]) / r["benchmark"]["median_s"]
                         for r in rounds],
    }
    result_row["ratio"] = result_row["trainer_s"] / result_row["benchmark_s"]
    result_row["within_5pct"] = abs(result_row["ratio"] - 1) <= 0.05
    loads = [r[s]["load_before"][0] for r in rounds for s in r if r[s]["load_before"]]
    environment = {**report.host_environment(__file__, argv),
                   "load_1min_range": [min(loads), max(loads)] if loads else None}
    result = {"benchmark": "trainer_speed", "environment": environment, "settings": vars(args),
              "results": [result_row], "raw": rounds}
    print("| trainer s/step | benchmark s/step | trainer ÷ benchmark | per-round | load |")
    print("|---|---|---|---|---|")
    print(f"| {result_row['trainer_s']:.3f} | {result_row['benchmark_s']:.3f} | "
          f"{result_row['ratio']:.3f} | "
          f"{', '.join(f'{x:.3f}' for x in result_row['round_ratios'])} | "
          f"{environment['load_1min_range']} |")
    report.write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
