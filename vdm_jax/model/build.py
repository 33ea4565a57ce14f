"""Building a `DiffusionModel` and its params from a config: the network (vdm_jax.nn.registry),
the schedule (fixed, or VDM's learned γ), the objective, and every registered loss term the config
switches on (vdm_jax.model.terms.TERMS); the terms' inputs and data checks, by the same registry.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from vdm_jax.core import meanflow, objectives, time_sampling
from vdm_jax.core import schedules as sch
from vdm_jax.model.core import DTYPES, DiffusionModel, Params
from vdm_jax.model.data_spec import DataSpec
from vdm_jax.model.terms import TERMS
from vdm_jax.nn.learned_schedule import LearnedGamma
from vdm_jax.nn.registry import build_model, logical_specs, resolve_spec

__all__ = ["build", "build_objective", "check_data", "load_term_inputs", "objective_kwargs",
           "schedule_kwargs", "with_compute_dtype"]


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def schedule_kwargs(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule constructor's keyword arguments: diffusion.schedule_kwargs, plus num_steps =
    diffusion.timesteps for a discrete-time schedule (DDPM's linear β)."""
    kwargs = dict(diffusion.get("schedule_kwargs") or {})
    fn = sch.SCHEDULES.get(diffusion["schedule"])
    if fn is not None and _accepts(fn, "num_steps") and diffusion.get("timesteps"):
        kwargs["num_steps"] = int(diffusion["timesteps"])
    return kwargs


def build_objective(
    diffusion: Mapping[str, Any],
) -> objectives.Objective | meanflow.MeanFlowObjective:
    """The training objective of config.diffusion: a named weighted-ELBO objective, or MeanFlow's
    (diffusion.objective = 'meanflow'), with diffusion.objective_kwargs."""
    if diffusion["objective"] == meanflow.OBJECTIVE:
        return meanflow.objective(**dict(diffusion.get("objective_kwargs") or {}))
    return objectives.get_objective(diffusion["objective"], **objective_kwargs(diffusion))


def objective_kwargs(diffusion: Mapping[str, Any]) -> dict[str, Any]:
    """The objective constructor's keyword arguments, with num_steps = diffusion.timesteps for
    a discrete-time objective (L_simple on DDPM's integer grid)."""
    kwargs = dict(diffusion.get("objective_kwargs") or {})
    fn = objectives.OBJECTIVES.get(diffusion["objective"])
    if fn is not None and _accepts(fn, "num_steps") and diffusion.get("timesteps"):
        kwargs["num_steps"] = int(diffusion["timesteps"])
    return kwargs


def build(config: Mapping[str, Any], data: DataSpec, seed: int) -> tuple[DiffusionModel, Params]:
    """The model and freshly initialized `params` described by config.model / config.diffusion
    and the loss terms it switches on, for data described by `data` (config.validate has checked
    the values)."""
    mcfg, dcfg = config["model"], config["diffusion"]
    spec = mcfg["spec"]
    spec = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
    h, w, c = data.image_shape
    num_classes = data.num_classes if dcfg.get("class_conditional", True) else 0
    denoiser = build_model(
        spec, input_size=(h, w), in_channels=c, num_classes=num_classes,
        learn_sigma=bool(mcfg["learn_sigma"]), dtype=DTYPES[mcfg["dtype"]],
        scan_layers=bool(mcfg.get("scan_layers", False)), remat=mcfg.get("remat", "none"),
        rngs=nnx.Rngs(params=seed),
    )
    denoiser_def, denoiser_params = nnx.split(denoiser)
    params: Params = {"denoiser": nnx.to_pure_dict(denoiser_params)}
    specs: Params = {"denoiser": logical_specs(denoiser)}
    schedule_def, fixed = None, None
    if dcfg["learned_schedule"]:
        kw = dict(dcfg.get("schedule_kwargs") or {})
        net = LearnedGamma(
            gamma_min=kw.get("gamma_min", -13.3), gamma_max=kw.get("gamma_max", 5.0),
            n_features=int(dcfg.get("learned_schedule_features", 1024)),
            rngs=nnx.Rngs(params=seed + 1),
        )
        schedule_def, schedule_params = nnx.split(net)
        params["schedule"] = nnx.to_pure_dict(schedule_params)
        specs["schedule"] = logical_specs(net)
    else:
        fixed = sch.get_schedule(dcfg["schedule"], shift=float(dcfg.get("shift", 1.0)),
                                 **schedule_kwargs(dcfg))
    terms = []
    for name, kind in TERMS.items():
        built = kind.build(config, data, denoiser, seed)
        if built is None:  # not switched on by this config
            continue
        term, term_params, term_specs = built
        if term_params is not None:
            params[name], specs[name] = term_params, term_specs
        terms.append(term)
    objective = build_objective(dcfg)
    alpha = time_sampling.resolve_time_shift(dcfg.get("time_shift", 1.0), data.image_shape)
    if alpha != 1.0:  # validate() allows it for weighted-ELBO objectives only (not MeanFlow)
        objective = dataclasses.replace(
            objective, density=time_sampling.shifted(objective.density, alpha))
    model = DiffusionModel(
        denoiser_def=denoiser_def,
        schedule_def=schedule_def,
        fixed_schedule=fixed,
        objective=objective,
        prediction=mcfg["prediction"],
        image_shape=data.image_shape,
        num_classes=num_classes,
        num_levels=data.num_levels,
        learn_sigma=bool(mcfg["learn_sigma"]),
        label_dropout=float(dcfg["label_dropout"]),
        ddpm_steps=int(dcfg.get("timesteps") or 0),
        param_specs=specs,
        terms=tuple(terms),
        network_family=resolve_spec(spec)["family"],
        time_shift=alpha,
    )
    return model, params


def build_abstract(config: Mapping[str, Any], data: DataSpec) -> tuple[DiffusionModel, Params]:
    """`build(config, data, config.seed)` from shapes alone: the model and its params as
    jax.ShapeDtypeStructs (nothing is initialized), for restoring into or compiling."""
    holder: dict[str, DiffusionModel] = {}

    def params_only() -> Params:
        holder["model"], params = build(config, data, int(config["seed"]))
        return params

    abstract = jax.eval_shape(params_only)
    return holder["model"], abstract


def with_compute_dtype(
    model: DiffusionModel, config: Mapping[str, Any], data: DataSpec, dtype: str,
) -> DiffusionModel:
    """`model` (built from `config`) computing in `dtype` ('float32' | 'bfloat16'; '' = as
    built): the same parameters (float32 whatever the compute dtype), another graph. Sampling
    precision is a sampling setting (SamplingSpec.dtype), independent of training's."""
    if not dtype or dtype == config["model"]["dtype"]:
        return model
    if dtype not in DTYPES:
        raise ValueError(f"compute dtype {dtype!r}; expected one of {tuple(DTYPES)}")
    changed = copy.deepcopy(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    changed["model"]["dtype"] = dtype
    changed.setdefault("seed", 0)
    return build_abstract(changed, data)[0]  # the graph only: no parameter is computed


def load_term_inputs(config: Mapping[str, Any]) -> dict[str, Any]:
    """{term name: its non-trained inputs} of every registered term that needs some under
    `config` (REPA's frozen encoder), loaded on the host; bad files raise naming them."""
    loaded = {name: kind.load_inputs(config) for name, kind in TERMS.items()}
    return {name: inputs for name, inputs in loaded.items() if inputs is not None}


def abstract_term_inputs(config: Mapping[str, Any]) -> dict[str, Any]:
    """`load_term_inputs` with shape-only leaves and no file read (ahead-of-time compilation)."""
    abstract = {name: kind.abstract_inputs(config) for name, kind in TERMS.items()}
    return {name: inputs for name, inputs in abstract.items() if inputs is not None}


def check_data(config: Mapping[str, Any], info: Any) -> None:
    """ValueError when the dataset (`info`, a vdm_jax.data.DatasetInfo) lacks what a term needs."""
    for kind in TERMS.values():
        kind.check_data(config, info)
