"""The one specification of how to sample a trained model: `SamplingSpec`.

Every place that samples — the trainer's periodic grids, end-of-run metrics, `launch/sample.py`,
evaluation records and the benchmarks — builds one `SamplingSpec`, and it is validated here
once, when it is made (`ValueError` naming the field and what it accepts). Fields:

    sampler              one of core.samplers.SAMPLERS ('meanflow' only for MeanFlow models,
                         and without classifier-free guidance: it is folded into training)
    num_steps            steps N of the time grid (NFE: core.samplers.nfe)
    guidance_scale       classifier-free guidance w (1 = the conditional model, no null pass)
    guidance_interval    (t_lo, t_hi) with 0 ≤ t_lo < t_hi ≤ 1: guide only there, else w = 1
    guidance_channels    guide only the first k output channels (DiT's sample.py guides 3 of
                         the 4 latent channels); None = all
    guidance             'cfg' (classifier-free: the null class is the weak prediction) or
                         'auto' (AutoGuidance, Karras et al. 2024: a second, weaker run of the
                         same data and prediction is; generation.generate), w, interval and
                         channels alike
    ema                  '' = the run's first EMA, 'none' = raw parameters, or a decay '0.9999'
    seed                 the sampling seed
    dtype                the network's compute dtype while sampling: 'float32', 'bfloat16', or
                         '' = the run's model.dtype (resolved, and recorded, when a run samples:
                         `resolve_dtype`); imported runs default to their source's float32
    options              sampler options, only those the sampler takes (core.samplers
                         .SAMPLER_OPTIONS): eta (ddim), variance (ddpm), lower_order_final
                         (dpm_solver_2m), diffusion_form, diffusion_norm, last_step (sit_sde),
                         rtol, atol (dopri5), clip_denoised, spacing, shift, t_min, t_max,
                         last_step_size (the grid's separate last step, SiT's 0.04); and,
                         with every sampler, DDT's encoder sharing (SHARING_OPTIONS):
                         encoder_interval k (recompute the condition encoder on steps 0, k,
                         2k, …: ⌈N/k⌉ encoder passes; 1 = no sharing) or encoder_steps (the
                         steps that recompute, from 0: a non-uniform schedule such as
                         core.encoder_sharing.sharing_schedule_dp's); reused in between, inside the
                         sampler's one lax.scan (core.encoder_sharing.SharedEncoder)

A spec is frozen and hashable; `replace(**changes)` returns a validated copy, `to_dict()` is what
results files record, and `slug()` is a file-name fragment that differs whenever any field does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from vdm_jax.core import adaptive_ode, samplers, sit_sde
from vdm_jax.core.encoder_sharing import sharing_refresh

__all__ = ["COMMON_OPTIONS", "DTYPES", "GUIDANCE_MODES", "SHARING_OPTIONS", "SamplingSpec"]

GUIDANCE_MODES = ("cfg", "auto")

# Options every sampler takes (the time grid); the rest are per sampler (SAMPLER_OPTIONS).
COMMON_OPTIONS = ("spacing", "shift", "t_min", "t_max", "last_step_size")
DTYPES = ("float32", "bfloat16")  # sampling compute dtypes ('' = the run's model.dtype)
# Options of the model function rather than the sampler, taken with every sampler: DDT's
# encoder sharing (the generation layer builds a core.encoder_sharing.SharedEncoder from them).
SHARING_OPTIONS = ("encoder_interval", "encoder_steps")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_option(sampler: str, key: str, value: Any) -> Any:
    """A validated, JSON-plain value of sampler option `key`."""
    if key in sit_sde.OPTIONS:
        return sit_sde.check_option(key, value)
    if key in adaptive_ode.OPTIONS:
        return adaptive_ode.check_option(key, value)
    if key == "last_step_size":
        h = _number(value, "sampler option last_step_size")
        if not 0.0 <= h < 1.0:
            raise ValueError(f"sampler option last_step_size must lie in [0, 1), got {h}")
        return h
    if key == "eta":
        return samplers.check_eta(_number(value, "sampler option eta"))
    if key == "variance":
        return samplers.check_variance(value)
    if key in ("lower_order_final", "clip_denoised"):
        if not isinstance(value, bool):
            raise ValueError(f"sampler option {key} must be true or false, got {value!r}")
        return value
    if key == "spacing":
        if value not in samplers.SPACINGS:
            raise ValueError(f"time-grid spacing {value!r}; expected one of {samplers.SPACINGS}")
        return value
    if key == "shift":
        shift = _number(value, "sampler option shift")
        if shift <= 0:
            raise ValueError(f"time-grid shift must be positive, got {shift}")
        return shift
    if key in ("t_min", "t_max"):
        t = _number(value, f"sampler option {key}")
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"sampler option {key} must lie in [0, 1], got {t}")
        return t
    if key == "encoder_interval":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"encoder_interval must be a positive int (1 = no sharing), got "
                             f"{value!r}")
        return value
    if key == "encoder_steps":
        if not isinstance(value, tuple | list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise ValueError(f"encoder_steps must be a list of step indices, got {value!r}")
        return tuple(value)
    raise ValueError(f"unknown sampler option {key!r}")


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """How to sample; see the module docstring. Validated on construction."""

    sampler: str = "dpm_solver_2m"
    num_steps: int = 25
    guidance_scale: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    guidance_channels: int | None = None
    guidance: str = "cfg"
    ema: str = ""
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()  # sorted (key, value) pairs: hashable
    dtype: str = ""

    def __post_init__(self) -> None:
        if self.sampler not in samplers.SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of "
                             f"{', '.join(samplers.SAMPLERS)}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) \
                or self.num_steps < 1:
            raise ValueError(f"the number of sampler steps must be a positive int, got "
                             f"{self.num_steps!r}")
        scale = _number(self.guidance_scale, "guidance scale")
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0 (1 = no guidance), got {scale}")
        if self.sampler == "meanflow" and scale != 1.0:
            raise ValueError(f"sampler 'meanflow' takes no classifier-free guidance (guidance "
                             f"scale must be 1, got {scale:g}): MeanFlow folds guidance into "
                             "training (diffusion.objective_kwargs omega, kappa)")
        object.__setattr__(self, "guidance_scale", scale)
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {self.guidance!r}")
        interval = self.guidance_interval
        if interval is not None:
            if not isinstance(interval, tuple | list) or len(interval) != 2:
                raise ValueError(f"guidance interval must be (t_lo, t_hi), got {interval!r}")
            lo, hi = (_number(v, "guidance interval bound") for v in interval)
            if not 0.0 <= lo < hi <= 1.0:
                raise ValueError(
                    f"guidance interval must satisfy 0 <= t_lo < t_hi <= 1, got ({lo}, {hi})")
            object.__setattr__(self, "guidance_interval", (lo, hi))
        k = self.guidance_channels
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"guidance channels must be a positive int or None, got {k!r}")
        if not isinstance(self.ema, str):
            raise ValueError(f"ema must be '', 'none' or a decay such as '0.9999', got "
                             f"{self.ema!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.dtype not in ("", *DTYPES):
            raise ValueError(f"sampling dtype {self.dtype!r}; expected one of {', '.join(DTYPES)} "
                             "(or '' for the run's model.dtype)")
        options = dict(self.options)
        allowed = COMMON_OPTIONS + samplers.SAMPLER_OPTIONS[self.sampler] + SHARING_OPTIONS
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"sampler {self.sampler!r} takes no option(s) {unknown}; its options "
                             f"are {', '.join(allowed)}")
        checked = {key: _check_option(self.sampler, key, v) for key, v in options.items()}
        t_min, t_max = checked.get("t_min", 0.0), checked.get("t_max", 1.0)
        if not t_min < t_max:
            raise ValueError(f"sampler options need t_min < t_max, got {t_min} and {t_max}")
        object.__setattr__(self, "options", tuple(sorted(checked.items())))
        self.encoder_refresh()  # checks encoder_interval / encoder_steps against num_steps

    def check_channels(self, channels: int) -> None:
        """ValueError when guidance_channels exceeds the `channels` a model outputs (it would
        guide all of them, silently)."""
        k = self.guidance_channels
        if k is not None and k > channels:
            raise ValueError(f"guidance channels {k} exceed the {channels} channel(s) the model "
                             f"outputs: give at most {channels}, or none (0 / None) to guide "
                             "all of them")

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> SamplingSpec:
        """A spec from a mapping with the field names (a config's `sample` section: keys that
        are not fields, such as `every` or `num_images`, are ignored; `options` is a dict)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in dict(values).items() if k in fields}
        if kwargs.get("guidance_interval") is not None:
            kwargs["guidance_interval"] = tuple(kwargs["guidance_interval"])
        if "options" in kwargs:
            kwargs["options"] = tuple(dict(kwargs["options"] or {}).items())
        return cls(**kwargs)

    def replace(self, **changes: Any) -> SamplingSpec:
        """A validated copy with `changes`; `options` may be given as a dict and is merged
        into (not replacing) the current options; an option set to None is removed."""
        if "options" in changes:
            merged = dict(self.options)
            for key, value in dict(changes["options"] or {}).items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            changes["options"] = tuple(merged.items())
        if changes.get("guidance_interval") is not None:
            changes["guidance_interval"] = tuple(changes["guidance_interval"])
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------------------- reading
    @property
    def sampler_options(self) -> dict[str, Any]:
        """Keyword options for `core.samplers.sample` (without the encoder-sharing ones)."""
        return {k: v for k, v in self.options if k not in SHARING_OPTIONS}

    def encoder_refresh(self) -> np.ndarray | None:
        """(num_steps,) bool: the steps that recompute a shared encoder (DDT), or None when
        the spec does not share (core.encoder_sharing.sharing_refresh)."""
        options = dict(self.options)
        interval, steps = options.get("encoder_interval"), options.get("encoder_steps")
        if interval is None and steps is None:
            return None
        if interval is not None and steps is not None:
            raise ValueError("give encoder_interval or encoder_steps, not both")
        return sharing_refresh(self.num_steps, interval=interval, steps=steps)

    def resolve_dtype(self, model_dtype: str) -> SamplingSpec:
        """This spec with dtype '' replaced by the run's `model_dtype` (what a run samples in)."""
        return self if self.dtype else self.replace(dtype=str(model_dtype))

    @property
    def nfe(self) -> int | None:
        """Network evaluations per sample (a guided evaluation runs a 2B batch); None for an
        adaptive solver (measured while sampling)."""
        return samplers.nfe(self.sampler, self.num_steps)

    def check_prediction(self, prediction: str) -> None:
        """The one check that the sampler suits a model of `prediction`: a MeanFlow model
        ('average_velocity') samples with 'meanflow', and only it does."""
        is_meanflow = prediction == samplers.AVERAGE_VELOCITY
        if is_meanflow and self.sampler != "meanflow":
            raise ValueError(f"a MeanFlow model samples with sampler 'meanflow' (e.g. --sampler="
                             f"meanflow --steps=1), not {self.sampler!r}")
        if self.sampler == "meanflow" and not is_meanflow:
            raise ValueError(f"sampler 'meanflow' needs a MeanFlow model (diffusion.objective="
                             f"'meanflow'); this one predicts {prediction!r}")

    def guided(self, num_classes: int) -> bool:
        """Whether sampling a model with `num_classes` classes runs classifier-free guidance."""
        if self.guidance == "auto":  # a guide network: conditional or not
            return self.guidance_scale != 1.0
        return bool(num_classes) and self.guidance_scale != 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain record of every field (what results files store)."""
        return {
            "sampler": self.sampler, "num_steps": self.num_steps, "nfe": self.nfe,
            "guidance_scale": self.guidance_scale,
            "guidance_interval": list(self.guidance_interval) if self.guidance_interval else None,
            "guidance_channels": self.guidance_channels, "ema": self.ema or "first",
            "seed": self.seed, "options": dict(self.options), "dtype": self.dtype or "model",
            # Only when set: a CFG spec's record (and slug) stays what it was.
            **({"guidance": self.guidance} if self.guidance != "cfg" else {}),
        }

    def describe(self) -> str:
        """One line for logs and tables, e.g. 'ddpm, 250 steps, guidance 1.5 on [0.1, 0.9]'."""
        kind = "autoguidance" if self.guidance == "auto" else "guidance"
        text = f"{self.sampler}, {self.num_steps} steps, {kind} {self.guidance_scale:g}"
        if self.dtype:
            text += f", {self.dtype}"
        if self.guidance_interval:
            text += f" on [{self.guidance_interval[0]:g}, {self.guidance_interval[1]:g}]"
        if self.guidance_channels:
            text += f" (first {self.guidance_channels} channels)"
        if self.options:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.options)
        return text

    def slug(self) -> str:
        """A file-name fragment naming every field: readable where short, plus a hash of the
        whole spec so two specs never share a name."""
        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
        ema = {"": "ema", "none": "raw"}.get(self.ema, "ema" + self.ema.replace(".", "p"))
        dtype = {"float32": "_f32", "bfloat16": "_bf16"}.get(self.dtype, "")
        return (f"{self.sampler}{self.num_steps}_w{self.guidance_scale:g}_{ema}_s{self.seed}"
                f"{dtype}_{digest[:8]}")
