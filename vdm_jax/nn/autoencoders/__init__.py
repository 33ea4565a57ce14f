"""Frozen image autoencoders whose latents the diffusion models are trained on.

    sd_vae     the Stable Diffusion VAE (AutoencoderKL, "kl-f8": 8× downsampling, 4 latent
               channels), loaded from diffusers or LDM weights by vdm_jax.importers.sd_vae
"""
