"""The training config: its schema (ml_collections), command-line overrides, validation, and what
may change when a run resumes.

Every module in configs/ starts from `default_config()` and overrides fields; `load(path,
overrides)` imports it, applies `--config.<key>=<value>` overrides (each checked against the
schema: an unknown key names the closest one, a wrongly typed value says what type is expected)
and locks it; `validate` then checks every value before anything is written. Sections:

    seed            int: initialization, data order and diffusion noise
    data            dataset (vdm_jax.data): name, data_dir, manual_dir, image_folder, image_size,
                    random_flip, worker_count; kind ('images' | 'latents': what the model
                    trains on), latent_dir (the latent dataset launch/encode_latents.py made
                    from those images), latent_posterior ('sample' | 'mean'), latent_scaling
                    ('autoencoder' | 'per_channel')
    autoencoder     weights: the autoencoder (SD-VAE or RAE) folder or file that made
                    data.latent_dir; it decodes the samples of a latent model. kind ('sd_vae' |
                    'rae'; unset: read from the weights)
    model           spec (a dict: {'name': 'DiT-XL/2'} for a registry size, optionally with
                    overrides, or a full spec {'family': 'dit', 'depth': …}), prediction
                    ('eps' | 'x' | 'v' | 'flow' | 'average_velocity' for MeanFlow), learn_sigma,
                    dtype (compute)
    diffusion       schedule (+ schedule_kwargs, shift) or learned_schedule; objective
                    (+ objective_kwargs; 'meanflow' takes core.meanflow.MeanFlowObjective's
                    fields and a two-time DiT on rectified flow); timesteps: T of a
                    discrete-time recipe (DDPM's linear β grid, L_simple on the integer grid,
                    the learned-σ term), 0 = continuous; label_dropout; class_conditional;
                    vlb_weight
    repa            REPA (vdm_jax.nn.repa): enabled, encoder ('dinov2' | 'digits'),
                    encoder_path (the frozen encoder's weights), encoder_size (DINOv2 size,
                    '' = the file's), encoder_dim (0 = the size's width), depth (align the
                    hidden state after this block; a DDT: of its encoder), weight λ,
                    projector_dim, features ('online' | 'stored')
    optim           AdamW: lr, warmup_steps, schedule, b1, b2, eps, weight_decay, grad_clip
                    (0 = off); ema_decays (one EMA per decay)
    train           num_steps, global_batch_size, micro_batches, log_every, checkpoint_every,
                    keep_checkpoints, keep_period, async_checkpoints, num_t_bins
    sample          the trainer's sample grids: every (0 = only at the end), num_images, and
                    the SamplingSpec fields sampler, num_steps, guidance_scale,
                    guidance_interval, guidance_channels, ema, options
    eval            at_end, batch_size, bpd_passes, num_samples (metrics at the end of training),
                    num_steps (sampler step counts to evaluate, e.g. (1, 2); () = sample's)
    mesh            data, fsdp (−1 = the remaining devices)
    distributed     coordinator_address, num_processes, process_id (multi-host; optional)

Resuming (`resume_config`): the config stored in the run directory is the base; overrides given
now are applied on top when their keys are safe to change mid-run (`SAFE_ON_RESUME`: schedule of
logging, checkpointing and sampling, the number of steps, evaluation, the mesh, paths to the same
data, and the optimizer's hyperparameters and EMAs) and refused otherwise, naming them.
"""

from vdm_jax.cli import parse_override_args
from vdm_jax.config.overrides import apply_overrides, load
from vdm_jax.config.resume import (
    SAFE_ON_RESUME,
    config_diff,
    flat,
    is_safe_on_resume,
    resume_config,
)
from vdm_jax.config.schema import (
    DTYPES,
    PREDICTIONS,
    check_batch,
    default_config,
    ema_choice,
    ema_name,
    sampling_spec,
    validate,
)

__all__ = [
    "DTYPES",
    "PREDICTIONS",
    "SAFE_ON_RESUME",
    "apply_overrides",
    "check_batch",
    "config_diff",
    "default_config",
    "ema_choice",
    "ema_name",
    "flat",
    "is_safe_on_resume",
    "load",
    "parse_override_args",
    "resume_config",
    "sampling_spec",
    "validate",
]
