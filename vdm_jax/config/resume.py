"""What a resumed run may change: the stored config is the base, overrides are applied on top
where `SAFE_ON_RESUME` allows, and refused (naming them) where they would change what the run's
checkpoints mean."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from vdm_jax.config.overrides import apply_overrides
from vdm_jax.config.schema import default_config

# Keys (dotted prefixes) a resumed run may change: none of them changes what the checkpoint's
# arrays mean. Everything else (model, diffusion, data identity, seed, batch) is fixed per run.
SAFE_ON_RESUME = (
    "train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.keep_period", "train.async_checkpoints", "train.num_t_bins", "train.micro_batches",
    "sample.", "eval.", "mesh.", "distributed.", "data.data_dir", "data.manual_dir",
    "data.worker_count", "data.latent_dir", "autoencoder.", "optim.", "repa.encoder_path",
    "model.remat",  # what the backward pass recomputes, not what the parameters are
)


def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: leaf value} of a (nested) config dict, dict-valued fields included, so a
    difference is named down to the key (model.spec.hidden_size)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        v = v.to_dict() if hasattr(v, "to_dict") else v
        if isinstance(v, Mapping):  # an empty dict contributes no key
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = flat(a), flat(b)
    return sorted(k for k in set(fa) | set(fb) if _plain(fa.get(k)) != _plain(fb.get(k)))


def is_safe_on_resume(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in SAFE_ON_RESUME)


def resume_config(
    stored: Mapping[str, Any], overrides: Sequence[tuple[str, str]], workdir: str,
    *, checkpointed: bool = True,
) -> tuple[ConfigDict, list[str]]:
    """The config of a resumed run: the stored one with `overrides` applied. Returns (config,
    the keys the overrides changed). ValueError listing overrides that would change a key that
    is fixed for a run (model, diffusion, data identity, seed, batch: see SAFE_ON_RESUME),
    unless the run never reached a checkpoint (`checkpointed=False`: nothing to protect)."""
    config = ConfigDict(_to_schema(stored))
    config.lock()
    apply_overrides(config, overrides)
    changed = config_diff(stored, config.to_dict())
    refused = [k for k in changed if not is_safe_on_resume(k)]
    if refused and checkpointed:
        old, new = flat(stored), flat(config.to_dict())
        lines = [f"{k}: {old.get(k)!r} in the run, {new.get(k)!r} now" for k in refused]
        raise ValueError(
            f"{workdir} holds a run whose " + "; ".join(lines) + ". These keys are fixed for a "
            "run (they change what its checkpoints mean): drop those overrides to resume it, or "
            "use a new --workdir to start another run.")
    return config, changed


def _to_schema(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config as the schema's types (JSON lists back to tuples where the schema has
    tuples), so overrides type-check as on a fresh start."""
    defaults = default_config()

    def convert(value: Any, default: Any) -> Any:
        if isinstance(default, tuple) and isinstance(value, list):
            return tuple(value)
        if isinstance(default, ConfigDict) and isinstance(value, Mapping):
            return {k: convert(v, default[k]) if k in default else v for k, v in value.items()}
        return value

    out = {}
    for k, v in stored.items():
        out[k] = convert(v, defaults[k]) if k in defaults else v
    for section in ("sample",):  # placeholder tuples read back from JSON as lists
        gi = out.get(section, {}).get("guidance_interval")
        if isinstance(gi, list):
            out[section]["guidance_interval"] = tuple(gi)
    return out
