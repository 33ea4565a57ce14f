"""Networks: Flax NNX modules that know nothing of training, data or files.

    layers               layers shared by the transformer backbones (patchify, sin-cos and
                         timestep embeddings, AdaLN modulation, RMSNorm, 2D RoPE, GELU and
                         SwiGLU MLPs, the final layer)
    blocks               the one AdaLN-Zero transformer block (norm, attention, MLP chosen by a
                         BlockSpec), the backbones' common constructor (`Backbone`), scan over
                         stacked layers and remat, stacked <-> per-block parameter layouts
    dit, jit, ddt        the DiT, JiT and DDT (decoupled encoder/decoder) denoisers
    dit_dh               DiT^DH (RAE): a DiT backbone with a wide, shallow DDT head
    repa                 REPA's projector head and alignment loss, and the target features of
                         the frozen encoders
    learned_schedule     VDM's monotone network for a learned γ(t) = −λ(t)
    registry             named sizes ("DiT-XL/2", "JiT-B/16", "DDT-XL/2", "DiTDH-XL/1"), spec
                         validation, `build_model`
    cost                 exact parameter counts and forward MACs / FLOPs
    encoders/            frozen feature networks (the FID Inception-v3, DINOv2, the digits CNN,
                         LPIPS-VGG16, the RAE's DINO discriminator)
    autoencoders/        frozen image autoencoders (the Stable Diffusion VAE, AutoencoderKL;
                         the representation autoencoder, RAE)

Build a denoiser with `vdm_jax.nn.registry.build_model`; every parameter carries logical axis
names for FSDP (`registry.logical_axes`, mapped to mesh axes in vdm_jax.parallel.mesh).
"""
