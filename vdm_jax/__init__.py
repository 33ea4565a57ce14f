"""vdm_jax: diffusion models in JAX, from the variational diffusion model to diffusion transformers.

Notation (see README, "Conventions"): t ∈ [0, 1] with t = 0 data and t = 1 noise,
z_t = α_t x + σ_t ε, λ_t = log(α_t² / σ_t²).
"""

__version__ = "0.1.0"
