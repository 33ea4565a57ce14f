"""The diffusion model's loss terms, one module per add-on (protocol: `base.LossTerm`):

    learned_variance   IDDPM's L_vlb for the variance head (model.learn_sigma)
    repa               REPA's alignment with a frozen encoder's features (repa.enabled)

`TERMS` is the registry, by name, in the order the terms are summed; `register` adds one.
MeanFlow is no term: it is an objective (vdm_jax.core.meanflow) that replaces the weighted ELBO
rather than adding to it (vdm_jax.model.core).
"""

from __future__ import annotations

from vdm_jax.model.terms.base import Forward, LossTerm
from vdm_jax.model.terms.learned_variance import LearnedVariance
from vdm_jax.model.terms.repa import Repa

__all__ = ["TERMS", "Forward", "LossTerm", "register"]

TERMS: dict[str, type[LossTerm]] = {cls.name: cls for cls in (LearnedVariance, Repa)}


def register(term: type[LossTerm]) -> type[LossTerm]:
    """Add a LossTerm subclass to `TERMS` under its `name` (usable as a class decorator); its
    loss is summed after those registered before it."""
    if not (isinstance(term, type) and issubclass(term, LossTerm)):
        raise TypeError(f"{term!r} is not a LossTerm subclass")
    if term.name in TERMS and TERMS[term.name] is not term:
        raise ValueError(f"a loss term named {term.name!r} is already registered "
                         f"({TERMS[term.name].__qualname__})")
    TERMS[term.name] = term
    return term
