"""The diffusion model: a core (network + schedule + objective) plus loss terms.

    core.py        DiffusionModel: predict, loss, bits/dim; the `Forward` pass the terms read
    terms/         one module per add-on to the loss (learned_variance, repa), each a
                   `terms.base.LossTerm` registered by name in `terms.TERMS`
    build.py       the model and its params from a config; the terms' inputs and data checks
    data_spec.py   DataSpec: what a model must know of its data

The names below are the package's interface; callers import them from `vdm_jax.model`.
"""

from vdm_jax.model.build import (
    abstract_term_inputs,
    build,
    build_abstract,
    build_objective,
    check_data,
    load_term_inputs,
    objective_kwargs,
    schedule_kwargs,
    with_compute_dtype,
)
from vdm_jax.model.core import BPD_NOT_APPLICABLE, DTYPES, DiffusionModel, Forward, Params
from vdm_jax.model.data_spec import DataSpec
from vdm_jax.model.terms.repa import (
    REPA_FEATURES,
    TargetEncoder,
    load_target_encoder_for,
    repa_encoder_dim,
)

__all__ = ["BPD_NOT_APPLICABLE", "DTYPES", "REPA_FEATURES", "DataSpec", "DiffusionModel",
           "Forward", "Params", "TargetEncoder", "abstract_term_inputs", "build",
           "build_abstract", "build_objective", "check_data", "load_target_encoder_for",
           "load_term_inputs", "objective_kwargs", "repa_encoder_dim", "schedule_kwargs",
           "with_compute_dtype"]
