"""Frozen image autoencoders whose latents the diffusion models are trained on.

    sd_vae     the Stable Diffusion VAE (AutoencoderKL, "kl-f8": 8× downsampling, 4 latent
               channels), loaded from diffusers or LDM weights by vdm_jax.importers.sd_vae
    rae        the representation autoencoder (RAE): frozen DINOv2-B with registers → 16×16×768
               latents, ViT-MAE decoder (B/L/XL), loaded from diffusers' AutoencoderRAE or the
               official files by vdm_jax.importers.rae
"""
