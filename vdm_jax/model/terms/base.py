"""The protocol of a loss term: one add-on to the diffusion model's training loss.

A term adds λ · ℓ(b) to the objective's per-example loss of example b (vdm_jax.model.core):

    L = mean_b [ objective_b + Σ_terms λ_term · ℓ_term(b) ]

and reports its own metrics. What a term is made of, each part optional:
    params      trained arrays of its own, in params[term.name] (checkpointed, in the EMAs;
                samplers never read them) — `build` creates them;
    inputs      arrays it needs that are never trained (a frozen network's weights), loaded once
                on the host by `load_inputs` and handed to every train step as
                term_inputs[term.name], sharded by the logical axes of `input_specs`;
    hidden      the denoiser's hidden state after block `hidden_depth` of the same forward pass.
A term is registered by name in vdm_jax.model.terms.TERMS; `build` returns None when the config
does not switch it on, so registering a term costs nothing to a config that does not use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax

from vdm_jax.model.core import Forward

__all__ = ["Forward", "LossTerm"]

Array = jax.Array


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class LossTerm:
    """Base of every loss term (module docstring): a frozen keyword-only dataclass; a subclass
    (decorated the same way) sets `name` and overrides `build` and `loss`, and the rest where it
    has params or inputs. Instances are static: they live in the model description, never in a
    traced pytree."""

    name: ClassVar[str]  # the registry's key, params[name], term_inputs[name]
    weight: float = 1.0  # λ
    hidden_depth: int | None = None  # the block after which it reads the hidden state

    @classmethod
    def build(cls, config: Mapping[str, Any], data: Any, denoiser: Any, seed: int
              ) -> tuple[LossTerm, Any, Any] | None:
        """(term, params or None, their logical PartitionSpecs or None) for `config` on data of
        `data` (a DataSpec) with the freshly built `denoiser` (an nnx module), or None when
        `config` does not switch the term on."""
        raise NotImplementedError

    @classmethod
    def load_inputs(cls, config: Mapping[str, Any]) -> Any | None:
        """The term's non-trained inputs for `config`, a pytree loaded on the host (bad files
        raise ValueError / FileNotFoundError naming them), or None when it needs none."""
        return None

    @classmethod
    def abstract_inputs(cls, config: Mapping[str, Any]) -> Any | None:
        """`load_inputs`' pytree with shape-only leaves (jax.ShapeDtypeStruct) and no file read,
        for compiling the train step ahead of time (vdm_jax.pipelines.compile); None when the
        term needs no inputs under `config`."""
        return None

    @classmethod
    def check_data(cls, config: Mapping[str, Any], info: Any) -> None:
        """Raise ValueError when the dataset described by `info` (a vdm_jax.data.DatasetInfo)
        lacks what the term needs under `config`."""

    def input_specs(self, inputs: Any) -> Any:
        """Logical PartitionSpecs of `inputs`, a pytree of the same structure."""
        raise NotImplementedError

    def loss(self, params: Any, inputs: Any, forward: Forward, batch: Mapping[str, Array]
             ) -> tuple[Array, dict[str, Array]]:
        """ℓ per example (B,) float32, before the weight, and the term's metrics (scalars, the
        names the trainer logs: '<something>_loss' by convention)."""
        raise NotImplementedError
