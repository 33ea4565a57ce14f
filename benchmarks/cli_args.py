"""The arguments the benchmarks share and what they build: a training config, the data spec and a
synthetic batch of the requested shape, and the model's analytic cost (MACs, FLOPs = 2·MACs)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vdm_jax import config as config_lib
from vdm_jax.model import DTYPES, DataSpec
from vdm_jax.nn.cost import model_cost
from vdm_jax.nn.registry import resolve_spec


def parse_model(text: str) -> str | dict[str, Any]:
    """--model: a registry name ("DiT-S/2") or a JSON spec dict ('{"family": "dit", ...}')."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"--model is not valid JSON: {e}") from None
        resolve_spec(spec)  # validates, with a message naming the bad key
        return spec
    resolve_spec(text)
    return text


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def float_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_model_args(parser: argparse.ArgumentParser, *, batch: str, steps: int) -> None:
    """The arguments every benchmark shares. --batch and --dtype take comma-separated lists
    (one configuration per combination)."""
    parser.add_argument("--model", type=parse_model, default="DiT-S/2",
                        help='registry name or JSON spec, e.g. \'{"family": "dit", "depth": 1, '
                             '"hidden_size": 64, "num_heads": 4, "patch_size": 2}\'')
    parser.add_argument("--input_size", type=int, default=32, help="H = W of the inputs")
    parser.add_argument("--in_channels", type=int, default=4)
    parser.add_argument("--num_classes", type=int, default=1000, help="0 = unconditional")
    parser.add_argument("--learn_sigma", action="store_true", help="DiT's variance head")
    parser.add_argument("--batch", type=int_list, default=int_list(batch),
                        help="global batch size(s), comma-separated")
    parser.add_argument("--dtype", type=str_list, default=["float32"],
                        help=f"compute dtype(s), comma-separated, of {sorted(DTYPES)}")
    parser.add_argument("--steps", type=int, default=steps, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs after compiling")
    parser.add_argument("--peak_size", type=int, default=2048,
                        help="n of the n×n matmul that measures the peak (0: skip)")
    parser.add_argument("--host_malloc", choices=("retain", "default"), default=None,
                        help="default: the trainer's setting ($VDM_HOST_MALLOC, else 'retain'); "
                             "'retain': keep freed host memory in the process (it saves "
                             "XLA:CPU's per-step page faults; vdm_jax.parallel.host); "
                             "'default': glibc's defaults")
    parser.add_argument("--out", default=None, help="write the results as JSON here")


def check_dtypes(dtypes: Sequence[str]) -> None:
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise SystemExit(f"--dtype {bad} not in {sorted(DTYPES)}")


def model_label(model: str | Mapping[str, Any]) -> str:
    return model if isinstance(model, str) else json.dumps(model, sort_keys=True)


def make_config(args: argparse.Namespace, dtype: str, batch: int) -> Any:
    """A training config (default_config, i.e. the trainer's defaults) for --model/--learn_sigma
    at `dtype` and `batch`, on the synthetic dataset of --input_size/--in_channels/--num_classes
    (what `launch/train.py --config.data.name=synthetic` trains on)."""
    cfg = config_lib.default_config()
    cfg.data.name = "synthetic"
    cfg.data.image_size = args.input_size
    cfg.data.synthetic_channels = args.in_channels
    cfg.data.synthetic_classes = max(args.num_classes, 1)
    cfg.model.spec = {"name": args.model} if isinstance(args.model, str) else dict(args.model)
    cfg.model.learn_sigma = bool(args.learn_sigma)
    cfg.model.dtype = dtype
    cfg.diffusion.class_conditional = args.num_classes > 0
    cfg.diffusion.timesteps = 1000 if args.learn_sigma else 0
    cfg.train.global_batch_size = batch
    if getattr(args, "grad_clip", None) is not None:
        cfg.optim.grad_clip = float(args.grad_clip)
    cfg.model.scan_layers = bool(getattr(args, "scan_layers", False))
    cfg.model.remat = getattr(args, "remat", "none")
    return cfg


def data_spec(args: argparse.Namespace) -> DataSpec:
    """Synthetic data of shape (input_size, input_size, in_channels), 8-bit levels."""
    return DataSpec(image_shape=(args.input_size, args.input_size, args.in_channels),
                    num_classes=max(args.num_classes, 1), num_levels=256)


def forward_cost(args: argparse.Namespace) -> dict[str, float]:
    """model_cost of one image (params, MACs, FLOPs = 2·MACs)."""
    return model_cost(
        args.model, input_size=args.input_size, in_channels=args.in_channels,
        num_classes=args.num_classes, learn_sigma=bool(args.learn_sigma),
    )


def synthetic_batch(args: argparse.Namespace, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (batch, args.input_size, args.input_size, args.in_channels)
    return {
        "image": rng.uniform(-1, 1, shape).astype(np.float32),
        "label": rng.integers(0, max(args.num_classes, 1), (batch,)).astype(np.int32),
    }
