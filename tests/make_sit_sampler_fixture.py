"""Writes tests/fixtures/sit_sampler/reference.npz: SiT's own SDE and ODE samplers (willisma/SiT
`transport`) run on the tiny DiT/SiT network of tests/fixtures/dit/ from fixed noise.

Run once, by a developer, with torch and torchdiffeq and a checkout of willisma/SiT (only its
transport/ package is imported; the tests need neither):

    .venv/bin/pip install torch==2.13.0 torchdiffeq==0.2.5 diffusers==0.42.1 \
        --extra-index-url https://download.pytorch.org/whl/cpu
    git clone https://github.com/willisma/SiT /tmp/SiT     # commit 947f95b was used
    PYTHONPATH=/tmp/SiT .venv/bin/python tests/make_sit_sampler_fixture.py

Produced with torch 2.13.0+cpu (the CPU wheel), torchdiffeq 0.2.5, willisma/SiT at 947f95b,
numpy 2.4.6.

The network is `official_forward` of tests/make_dit_fixture.py (DiT's models.py forward, which is
SiT's network; SiT's forward keeps the first C = 4 output channels, its velocity v = dz/dτ) with
the weights of tests/fixtures/dit/official_weights.safetensors, and guidance as SiT's
`forward_with_cfg`: the batch is [z, z] with labels [y, null], scale 1.5 on the first 3 channels.
Transport: create_transport("Linear", "velocity") (SiT's defaults; sample_eps = 0).

SDE: Sampler.sample_sde(sampling_method="Euler", num_steps=N) for each (diffusion_form,
last_step) below, last_step_size 0.04: N − 1 Euler–Maruyama steps on τ ∈ [0, 0.96] then the last
step. SiT draws the step noise with torch.randn(x.size()) on the 2B-row batch; here torch.randn
is replaced, for the call, by a function returning the rows of a fixed array `sde_noise`
(N − 1, 2B, C, H, W) in order (asserted: exactly N − 1 draws of that shape). Only the first B
rows matter (forward_with_cfg reads x[:B]).

ODE: Sampler.sample_ode(sampling_method="dopri5", atol=1e-6, rtol=1e-3) (SiT's defaults; torch
float32), the final point; its NFE counted by wrapping the model; and a tight solution of the
same ODE, the solver in float64 (rtol = atol = 1e-10, the network in float32), as the reference
both solvers are compared against; and the same default solve with the network computed in
float64 and its output rounded to float32 (`ode_rounded`): the adaptive solve's own float32
spread (1.7e-4 max relative here; the previous build of this fixture, torch 2.13.0 from PyPI,
moved `ode_default` by 1.3e-4 and the fixed-step SDE samples by ≤ 4.7e-7).

Arrays (NCHW, SiT's layout): z (B, C, H, W) the initial noise at τ = 0, y (B,) labels,
sde_noise, sde_<form>_<last> (B, C, H, W) for each case, ode_default, ode_nfe, ode_rounded,
ode_rounded_nfe, ode_tight.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
from make_dit_fixture import CHANNELS, CLASSES, SIZE, official_forward
from transport import Sampler, create_transport  # willisma/SiT, on PYTHONPATH

OUT = Path(__file__).parent / "fixtures" / "sit_sampler"
WEIGHTS = Path(__file__).parent / "fixtures" / "dit" / "official_weights.safetensors"
B, N, CFG, GUIDED_CHANNELS = 4, 10, 1.5, 3
SDE_CASES = [("sigma", "Mean"), ("linear", "Mean"), ("constant", "Mean"),
             ("decreasing", "Mean"),
             ("sigma", "Tweedie"), ("sigma", "Euler")]


def sit_model(sd: dict[str, torch.Tensor]):
    """SiT's forward_with_cfg of the fixture network: (2B, C, H, W), (2B,), (2B,) → velocity."""

    def forward_with_cfg(x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        out = official_forward(sd, torch.cat([half, half]), t, y)[:, :CHANNELS]
        guided, rest = out[:, :GUIDED_CHANNELS], out[:, GUIDED_CHANNELS:]
        cond, uncond = guided.chunk(2)
        mixed = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([mixed, mixed]), rest], dim=1)

    return forward_with_cfg


@contextlib.contextmanager
def fixed_randn(noise: np.ndarray):
    """torch.randn(size) returns noise[0], noise[1], ... (each of that size) while active."""
    original, draws = torch.randn, []

    def randn(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        assert shape == noise.shape[1:], shape
        draws.append(shape)
        return torch.from_numpy(noise[len(draws) - 1].copy())

    torch.randn = randn
    try:
        yield draws
    finally:
        torch.randn = original


def main() -> None:
    sd32 = {k: torch.from_numpy(v) for k, v in load_file(str(WEIGHTS)).items()}
    rng = np.random.default_rng(27)
    z = rng.standard_normal((B, CHANNELS, SIZE, SIZE)).astype(np.float32)
    y = np.array([0, 3, 7, 9], np.int64)
    y2 = torch.from_numpy(np.concatenate([y, np.full_like(y, CLASSES)]))
    z2 = torch.from_numpy(np.concatenate([z, z]))
    sde_noise = rng.standard_normal((N - 1, 2 * B, CHANNELS, SIZE, SIZE)).astype(np.float32)
    sampler = Sampler(create_transport("Linear", "velocity"))
    out = {"z": z, "y": y, "sde_noise": sde_noise}
    model = sit_model(sd32)
    with torch.no_grad():
        for form, last in SDE_CASES:
            # A tensor norm: SiT's 'constant' form returns the norm itself, and th.sqrt of a
            # Python float fails.
            fn = sampler.sample_sde(sampling_method="Euler", diffusion_form=form,
                                    diffusion_norm=torch.tensor(1.0), last_step=last,
                                    last_step_size=0.04, num_steps=N)
            with fixed_randn(sde_noise) as draws:
                x = fn(z2, model, y=y2, cfg_scale=CFG)[-1][:B]
            assert len(draws) == N - 1, len(draws)
            out[f"sde_{form}_{last.lower()}"] = x.numpy()

        calls = [0]

        def counted(x, t, y, cfg_scale, model=model):
            calls[0] += 1
            return model(x, t, y, cfg_scale)

        fn = sampler.sample_ode(sampling_method="dopri5", num_steps=2, atol=1e-6, rtol=1e-3)
        out["ode_default"] = fn(z2, counted, y=y2, cfg_scale=CFG)[-1][:B].numpy()
        out["ode_nfe"] = np.int64(calls[0])
        # The spread of the adaptive solve itself: the same solver and network with the network
        # computed in float64 and its output rounded to float32 (another float32 rounding of
        # the same function). Its step sizes follow error estimates that are differences of
        # stages, so rounding moves them, and the final point with them.
        sd64 = {k: v.double() for k, v in sd32.items()}
        model_f64 = sit_model(sd64)
        calls[0] = 0

        def rounded(x, t, y, cfg_scale):
            calls[0] += 1
            return model_f64(x.double(), t.double(), y, cfg_scale).float()

        out["ode_rounded"] = fn(z2, rounded, y=y2, cfg_scale=CFG)[-1][:B].numpy()
        out["ode_rounded_nfe"] = np.int64(calls[0])
        # The solver in float64 (the network stays float32: its rounding, ~1e-7, is far below
        # the float32 tolerances compared against).
        def model64(x, t, y, cfg_scale):
            return model(x.float(), t.float(), y, cfg_scale).double()

        tight = sampler.sample_ode(sampling_method="dopri5", num_steps=2, atol=1e-10, rtol=1e-10)
        out["ode_tight"] = tight(z2.double(), model64, y=y2, cfg_scale=CFG)[-1][:B]
        out["ode_tight"] = out["ode_tight"].float().numpy()
    spread = (np.max(np.abs(out["ode_default"] - out["ode_rounded"]))
              / np.max(np.abs(out["ode_tight"])))
    print(f"the same solve with the network rounded otherwise: {out['ode_rounded_nfe']} NFE, "
          f"max relative difference {spread:.2e}")
    for key in ("ode_default", "ode_rounded", "ode_tight"):
        assert np.all(np.isfinite(out[key])), key
    err = np.max(np.abs(out["ode_default"] - out["ode_tight"])) / np.max(np.abs(out["ode_tight"]))
    print(f"torchdiffeq dopri5 (rtol 1e-3, atol 1e-6): {out['ode_nfe']} NFE, max relative "
          f"error vs the tight float64 solution {err:.2e}")
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "reference.npz", **out)
    print(f"wrote {OUT / 'reference.npz'} ({(OUT / 'reference.npz').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
