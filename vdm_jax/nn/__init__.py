"""Networks: Flax NNX modules that know nothing of training, data or files.

    layers               layers shared by the transformer backbones (patchify, sin-cos and
                         timestep embeddings, AdaLN modulation, RMSNorm, 2D RoPE, GELU and
                         SwiGLU MLPs, the final layer)
    blocks               the one AdaLN-Zero transformer block (norm, attention, MLP chosen by a
                         BlockSpec), the backbones' common constructor (`Backbone`), scan over
                         stacked layers and remat, stacked <-> per-block parameter layouts
    dit, jit, ddt        the DiT, JiT and DDT (decoupled encoder/decoder) denoisers
    repa                 REPA's projector head and alignment loss, and the target features of
                         the frozen encoders
    learned_schedule     VDM's monotone network for a learned γ(t) = −λ(t)
    registry             named sizes ("DiT-XL/2", "JiT-B/16", "DDT-XL/2"), spec validation,
                         `build_model`
    cost                 exact parameter counts and forward MACs / FLOPs
    encoders/            frozen feature networks (the FID Inception-v3, DINOv2, the digits CNN)
    autoencoders/        frozen image autoencoders (the Stable Diffusion VAE, AutoencoderKL)

Build a denoiser with `vdm_jax.nn.registry.build_model`; every parameter carries logical axis
names for FSDP (`registry.logical_axes`, mapped to mesh axes in vdm_jax.parallel.mesh).
"""
