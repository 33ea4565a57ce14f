"""Decoder training of a representation autoencoder (RAE stage 1; official
`src/train_stage1.py` of bytetriper/RAE): the encoder frozen, its ViT decoder trained on

    generator:      L_G = L1 + w_p·LPIPS + [step ≥ s_gan] · w_d·λ·L_gan
      L1   = mean |x̂ − x| / 2          (the official L1 on [0, 1] images; x, x̂ in [−1, 1])
      x̂    = decoder(t + σ·ε),  t = encoder(x) tokens,  σ = τ·u, u ~ U[0, 1) per example
             (`noise_tokens`, τ = 0.8; the latent statistics cancel between encode and decode)
      L_gan = −mean D(DiffAug(x̂))       (`vanilla_g_loss`; D without power iteration)
      λ    = clip(‖∇_W L_rec‖ / (‖∇_W L_gan‖ + 1e-6), 0, 1e4),  L_rec = L1 + w_p·LPIPS,
             W the decoder's last layer (`decoder_pred` kernel); λ a constant in the gradient
    discriminator (from step s_d, after the generator's update):
      x̃ = round((clip(decoder(t), −1, 1) + 1)·127.5)/127.5 − 1   (no noise, 8-bit)
      L_D = hinge(D(DiffAug(x)), D(DiffAug(x̃)))  (fake then real: one power iteration each)
    AdamW (β = 0.9, 0.95) for both, each with a cosine schedule warmed up from zero (the
    official `build_scheduler`: lr(k) = base·(k + 1)/warmup below `warmup`, then a cosine from
    base to final until `decay_end`, final after); EMA of the decoder, ê ← d·ê + (1 − d)·θ.

Schedules and starts are given in epochs (`train.num_epochs`, `optim.warmup_epochs`,
`loss.disc_start_epoch`, ...) and counted in steps of ⌊N_train / batch⌋ per epoch, as the
official trainer does. Only what the trainer is given runs: `loss.perceptual_weight = 0` needs
no LPIPS network and `loss.disc_weight = 0` no discriminator (the digits demonstration).

The train state is the project's (vdm_jax.checkpoints): params = {"decoder": θ}, ema =
{ema_<d>: {"decoder": ê}} (so an EMA restores alone for inference), opt_state = the generator's
AdamW state plus, with a discriminator, its AdamW state, its trained head parameters and the
spectral norms' power-iteration vectors; meta = step and the base key, whose
fold_in(key, step) draws every step's noise and augmentations, so a resumed run repeats the
uninterrupted one bit for bit on the same devices (the data iterator's position is
checkpointed too). Data parallel over every device (jit + NamedSharding: the batch split along
'data', parameters and optimizer state replicated).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vdm_jax import config as config_lib
from vdm_jax.checkpoints.manager import Checkpointer
from vdm_jax.core.gan import adaptive_weight, diffaug, hinge_d_loss, vanilla_g_loss
from vdm_jax.data import dataset_info, train_iterator
from vdm_jax.io import write_json
from vdm_jax.model import DataSpec
from vdm_jax.nn.autoencoders.rae import NOISE_TAU, noise_tokens
from vdm_jax.nn.encoders.dino_disc import SpectralState
from vdm_jax.parallel import mesh as mesh_lib
from vdm_jax.rundir import RunDir

__all__ = ["DecoderTrainer", "cosine_warmup_lr", "decoder_train_config", "train_decoder"]

Array = jax.Array
ADAPTIVE_EPS = 1e-6  # official calculate_adaptive_weight
MAX_D_WEIGHT = 1e4


def decoder_train_config() -> ml_collections.ConfigDict:
    """Defaults: the official DINOv2-B → ViT-XL recipe (configs/stage1/training/DINOv2-B_decXL
    .yaml) where it does not depend on the model or data; configs fill in the rest."""
    data = config_lib.default_config().data
    return ml_collections.ConfigDict(dict(
        seed=0,
        data=data,
        model=dict(kind="rae", weights="", reinit_decoder=True,
                   digits=dict(hidden=128, layers=2, heads=4, mlp=256)),
        train=dict(batch_size=512, num_epochs=16.0, num_steps=0, checkpoint_every=1000,
                   keep_checkpoints=3, keep_period=0, async_checkpoints=True, log_every=100),
        optim=dict(lr=2e-4, final_lr=2e-5, b1=0.9, b2=0.95, weight_decay=0.0,
                   warmup_epochs=1.0, decay_end_epoch=16.0, ema_decays=[0.9978]),
        loss=dict(noise_tau=NOISE_TAU, perceptual_weight=1.0, lpips_start_epoch=0.0,
                  disc_weight=0.75, disc_start_epoch=8.0, disc_update_start_epoch=6.0,
                  max_d_weight=MAX_D_WEIGHT, lpips_vgg="", lpips_heads="",
                  disc_dino="", disc_heads="", diffaug_prob=1.0, diffaug_cutout=0.0),
    ))


def cosine_warmup_lr(base: float, final: float, warmup: int, decay_end: int
                     ) -> Callable[[Array], Array]:
    """The official cosine schedule warmed up from zero, as an optax schedule of the step k:
    base·(k + 1)/warmup for k < warmup; final + (base − final)·½(1 + cos(π·(k − warmup) /
    max(decay_end − warmup, 1))) until decay_end; final after."""
    decay_end = max(decay_end, warmup)
    span = max(decay_end - warmup, 1)

    def lr(k: Array) -> Array:
        k = jnp.asarray(k, jnp.float32)
        warm = base * (k + 1.0) / max(warmup, 1)
        cos = final + (base - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * (k - warmup) / span))
        return jnp.where(k < warmup, warm, jnp.where(k >= decay_end, final, cos))

    return lr


@dataclasses.dataclass(frozen=True)
class _Steps:
    """The config's epochs in steps."""

    per_epoch: int
    total: int
    warmup: int
    decay_end: int
    lpips_start: int
    gan_start: int
    disc_update_start: int

    @classmethod
    def of(cls, config: Mapping[str, Any], num_train: int) -> _Steps:
        per_epoch = num_train // int(config["train"]["batch_size"])
        if per_epoch < 1:
            raise ValueError(f"train.batch_size {config['train']['batch_size']} exceeds the "
                             f"{num_train} training examples")
        s = lambda e: int(float(e) * per_epoch)
        o, loss = config["optim"], config["loss"]
        return cls(per_epoch, s(config["train"]["num_epochs"]), s(o["warmup_epochs"]),
                   s(o["decay_end_epoch"]), s(loss["lpips_start_epoch"]),
                   s(loss["disc_start_epoch"]), s(loss["disc_update_start_epoch"]))


_DECODER = nnx.All(nnx.Param, nnx.PathContains("decoder"))
_HEADS = nnx.All(nnx.Param, nnx.PathContains("heads"))


def _merge(graphdef: Any, template: nnx.State, pure: Any, *rest: nnx.State) -> nnx.Module:
    state = jax.tree.map(lambda x: x, template)  # a fresh State to fill
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state, *rest)


class DecoderTrainer:
    """One jitted training step of the decoder of `model` (a module with `encode_tokens(images)
    → (B, g, g, C)`, `decode_tokens((B, g·g, C)) → images` and an `RAEDecoder` as `decoder`,
    e.g. `RAE` or `DigitsRAE`), with the optional LPIPS network and discriminator."""

    def __init__(self, config: Mapping[str, Any], steps: _Steps, model: nnx.Module,
                 lpips: nnx.Module | None = None, disc: nnx.Module | None = None):
        loss = config["loss"]
        self.config, self.steps = config, steps
        self.perceptual_weight = float(loss["perceptual_weight"])
        self.disc_weight = float(loss["disc_weight"])
        if self.perceptual_weight > 0 and lpips is None:
            raise ValueError("loss.perceptual_weight > 0 needs the LPIPS network "
                             "(loss.lpips_vgg, loss.lpips_heads)")
        if self.disc_weight > 0 and disc is None:
            raise ValueError("loss.disc_weight > 0 needs the discriminator (loss.disc_dino)")
        self.ema_decays = tuple(float(d) for d in config["optim"]["ema_decays"])
        self.graphdef, dec, rest = nnx.split(model, _DECODER, ...)
        self.dec_template = dec
        self.frozen = {"model": rest}
        o = config["optim"]
        self.tx = optax.adamw(cosine_warmup_lr(o["lr"], o["final_lr"], steps.warmup,
                                               steps.decay_end),
                              b1=o["b1"], b2=o["b2"], weight_decay=o["weight_decay"])
        self.lpips = None
        if self.perceptual_weight > 0:
            self.lpips_graphdef, lp = nnx.split(lpips)
            self.frozen["lpips"] = lp
            self.lpips = True
        self.disc = None
        if self.disc_weight > 0:
            self.disc_graphdef, heads, spectral, dino = nnx.split(disc, _HEADS, SpectralState,
                                                                  ...)
            self.heads_template, self.spectral_template = heads, spectral
            self.frozen["dino"] = dino
            self.disc = True
            self.disc_tx = optax.adamw(
                cosine_warmup_lr(o["lr"], o["final_lr"], steps.warmup, steps.decay_end),
                b1=o["b1"], b2=o["b2"], weight_decay=o["weight_decay"])
        self.step = jax.jit(self._step, donate_argnums=0)

    # ---------------------------------------------------------------------------- state
    def init_state(self, seed: int) -> dict[str, Any]:
        dec = nnx.to_pure_dict(self.dec_template)
        opt = {"decoder": self.tx.init(dec)}
        if self.disc:
            heads = nnx.to_pure_dict(self.heads_template)
            opt.update(disc=self.disc_tx.init(heads), disc_params=heads,
                       disc_spectral=nnx.to_pure_dict(self.spectral_template))
        copy = lambda t: jax.tree.map(jnp.array, t)
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": {"decoder": dec},
            "ema": {config_lib.ema_name(d): {"decoder": copy(dec)} for d in self.ema_decays},
            "opt_state": opt,
            "rng": jax.random.PRNGKey(seed),
        }

    # ----------------------------------------------------------------------------- step
    def _disc_fn(self, heads: Any, spectral: Any, frozen: Any, images: Array, update: bool
                 ) -> tuple[Array, Any]:
        d = _merge(self.disc_graphdef, self.heads_template, heads,
                   _fill(self.spectral_template, spectral), frozen["dino"])
        logits = d(images, update=update)  # (B, heads·L)
        return logits, nnx.to_pure_dict(nnx.state(d, SpectralState))

    def _step(self, state: dict[str, Any], frozen: dict[str, Any], images: Array
              ) -> tuple[dict[str, Any], dict[str, Array]]:
        """One generator update, the EMA, then (from its start) one discriminator update.
        images (B, H, W, C) in [−1, 1]."""
        loss_cfg, st = self.config["loss"], self.steps
        step = state["step"]
        k_noise, k_gaug, k_fake, k_real = jax.random.split(
            jax.random.fold_in(state["rng"], step), 4)
        rest = frozen["model"]
        model0 = _merge(self.graphdef, self.dec_template, state["params"]["decoder"], rest)
        tokens = model0.encode_tokens(images)  # (B, g, g, C), frozen
        b = tokens.shape[0]
        tokens = tokens.reshape(b, -1, tokens.shape[-1])  # (B, T, C)
        noisy = noise_tokens(k_noise, tokens, float(loss_cfg["noise_tau"]))  # (B, T, C)
        opt = state["opt_state"]
        use_lpips = (step >= st.lpips_start).astype(jnp.float32)

        def losses(dec: Any) -> tuple[Array, Array]:
            model = _merge(self.graphdef, self.dec_template, dec, rest)
            recon = model.decode_tokens(noisy)  # (B, H, W, C) in [−1, 1]
            l1 = 0.5 * jnp.mean(jnp.abs(recon - images))
            rec = l1
            if self.lpips:
                lp = nnx.merge(self.lpips_graphdef, frozen["lpips"])
                rec = rec + self.perceptual_weight * use_lpips * jnp.mean(lp(images, recon))
            gan = jnp.zeros(())
            if self.disc:
                logits, _ = self._disc_fn(opt["disc_params"], opt["disc_spectral"], frozen,
                                          diffaug(k_gaug, recon, loss_cfg["diffaug_prob"],
                                                  loss_cfg["diffaug_cutout"]), update=False)
                gan = vanilla_g_loss(logits)
            return rec, gan, l1

        dec = state["params"]["decoder"]
        (rec, gan, l1), vjp = jax.vjp(losses, dec)
        zero = jnp.zeros(())
        g_rec = vjp((jnp.ones(()), zero, zero))[0]
        metrics = {"l1": l1, "rec": rec}
        grads = g_rec
        if self.disc:
            g_gan = vjp((zero, jnp.ones(()), zero))[0]
            last = lambda g: g["decoder"]["decoder_pred"]["kernel"]
            lam = adaptive_weight(last(g_rec), last(g_gan), float(loss_cfg["max_d_weight"]),
                                  eps=ADAPTIVE_EPS)
            coef = jnp.where(step >= st.gan_start, self.disc_weight * lam, 0.0)
            grads = jax.tree.map(lambda a, c: a + coef * c, g_rec, g_gan)
            metrics.update(gan=gan, adaptive_weight=lam)
        updates, opt_dec = self.tx.update(grads, opt["decoder"], dec)
        dec = optax.apply_updates(dec, updates)
        ema = {name: {"decoder": jax.tree.map(lambda e, p, d=d: d * e + (1.0 - d) * p,
                                              state["ema"][name]["decoder"], dec)}
               for name, d in zip(state["ema"], self._ema_of(state), strict=True)}
        opt = {**opt, "decoder": opt_dec}
        if self.disc:
            opt, d_loss = jax.lax.cond(
                step >= st.disc_update_start,
                lambda o: self._disc_update(o, frozen, dec, tokens, images, k_fake, k_real),
                lambda o: (o, jnp.zeros(())), opt)
            metrics["disc_loss"] = d_loss
        new = {"step": step + 1, "params": {"decoder": dec}, "ema": ema, "opt_state": opt,
               "rng": state["rng"]}
        return new, metrics

    def _ema_of(self, state: dict[str, Any]) -> list[float]:
        by_name = {config_lib.ema_name(d): d for d in self.ema_decays}
        return [by_name[name] for name in state["ema"]]

    def _disc_update(self, opt: dict[str, Any], frozen: dict[str, Any], dec: Any,
                     tokens: Array, images: Array, k_fake: Array, k_real: Array
                     ) -> tuple[dict[str, Any], Array]:
        loss_cfg = self.config["loss"]
        model = _merge(self.graphdef, self.dec_template, dec, frozen["model"])
        fake = jax.lax.stop_gradient(model.decode_tokens(tokens))  # (B, H, W, C), no noise
        fake = jnp.round((jnp.clip(fake, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0  # 8-bit
        aug = lambda k, x: diffaug(k, x, loss_cfg["diffaug_prob"],
                                   loss_cfg["diffaug_cutout"])
        fake_in, real_in = aug(k_fake, fake), aug(k_real, images)

        def d_loss(heads: Any) -> tuple[Array, Any]:
            l_fake, spectral = self._disc_fn(heads, opt["disc_spectral"], frozen, fake_in, True)
            l_real, spectral = self._disc_fn(heads, spectral, frozen, real_in, True)
            return hinge_d_loss(l_real, l_fake), spectral

        (loss, spectral), grads = jax.value_and_grad(d_loss, has_aux=True)(opt["disc_params"])
        updates, opt_d = self.disc_tx.update(grads, opt["disc"], opt["disc_params"])
        heads = optax.apply_updates(opt["disc_params"], updates)
        return {**opt, "disc": opt_d, "disc_params": heads, "disc_spectral": spectral}, loss


def _fill(template: nnx.State, pure: Any) -> nnx.State:
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, pure)
    return state


def train_decoder(config: ml_collections.ConfigDict, workdir: str, model: nnx.Module, *,
                  lpips: nnx.Module | None = None, disc: nnx.Module | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) the decoder of `model` in run directory `workdir`; returns
    {"step", "params", "ema", "steps_per_epoch", "seconds"}. `train.num_steps` > 0 stops
    there (the schedules still follow `train.num_epochs`); checkpoints every
    `train.checkpoint_every` steps and at the end."""
    rundir = RunDir(workdir)
    rundir.check_unlocked()
    info = dataset_info(config.data)
    steps = _Steps.of(config, info.num_train)
    stop = int(config.train.num_steps) or steps.total
    mesh = mesh_lib.make_mesh()
    if int(config.train.batch_size) % mesh.size:
        raise ValueError(f"train.batch_size {config.train.batch_size} is not divisible by the "
                         f"{mesh.size} devices")
    trainer = DecoderTrainer(config, steps, model, lpips, disc)
    # Data parallel: the batch split over every device, everything else replicated.
    state = jax.device_put(trainer.init_state(int(config.seed)), mesh_lib.replicated(mesh))
    frozen = jax.device_put(trainer.frozen, mesh_lib.replicated(mesh))
    data_spec = DataSpec.from_info(info).to_dict()
    data_iter = train_iterator(config.data, global_batch_size=int(config.train.batch_size),
                               seed=int(config.seed),
                               mesh_sharding=mesh_lib.batch_sharding(mesh))
    t0 = time.perf_counter()
    with rundir.lock():
        write_json(rundir.config_json, config.to_dict())
        ckpt = Checkpointer(rundir.checkpoints, int(config.train.keep_checkpoints),
                            int(config.train.keep_period) or None,
                            bool(config.train.async_checkpoints))
        try:
            restored = ckpt.restore_latest(state, config.to_dict(), data_spec)
            if restored is not None:
                state, data_state = restored
                data_iter.set_state(data_state)
                log(f"resumed at step {int(state['step'])}")
            every = int(config.train.checkpoint_every)
            log_every = max(int(config.train.log_every), 1)
            while int(state["step"]) < stop:
                images = next(data_iter)["image"]  # (B, H, W, C), sharded over the batch
                state, metrics = trainer.step(state, frozen, images)
                k = int(state["step"])
                if k % log_every == 0 or k == stop:
                    log(f"step {k}/{stop}: " + ", ".join(
                        f"{n} {float(v):.4f}" for n, v in metrics.items()))
                    if not all(math.isfinite(float(v)) for v in metrics.values()):
                        raise FloatingPointError(f"non-finite loss at step {k}")
                if k == stop or (every > 0 and k % every == 0):
                    ckpt.save(state, data_iter.get_state(), config.to_dict(), data_spec)
            ckpt.wait()
        finally:
            ckpt.close()
    return {"step": int(state["step"]), "params": state["params"], "ema": state["ema"],
            "steps_per_epoch": steps.per_epoch, "seconds": time.perf_counter() - t0}
