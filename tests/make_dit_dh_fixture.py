"""Writes tests/fixtures/dit_dh/: tiny random DiT^DH networks in the official layout, their
outputs, and the official sampler's trajectories.

Run once, by a developer (not in CI; the tests need only NumPy and safetensors), with a
checkout of the official code:

    git clone https://github.com/bytetriper/RAE /tmp/RAE   # commit a4d18c4
    .venv/bin/python tests/make_dit_dh_fixture.py --rae /tmp/RAE

Produced with torch 2.13.0 (CPU), torchdiffeq 0.2.5, safetensors 0.8.0, numpy 2.4.6, RAE at
a4d18c4. The networks are RAE's `stage2.models.DDT.DiTwDDTHead` and the sampler its
`stage2.transport` (create_transport + Sampler.sample_ode, torchdiffeq's fixed-grid Euler), both
imported unchanged from the checkout. Three imports they make are stubbed because this
environment lacks them and the code paths used here never touch them: `regex.B` and
`transformers.SwinModel` (unused imports of DDT.py), and timm's `vision_transformer` (which
needs torchvision): its `PatchEmbed` is re-stated below with timm 1.0's defaults (a p×p stride-p
Conv2d, flatten to (B, T, D), no norm), `Mlp` and `Attention` are unused placeholders.

Networks (every weight random and nonzero, the official init zeroes the AdaLN and final layers,
which would hide mistakes; W and pos_embed stay what the constructor makes):
  main   input 4×4×6, patch 1, hidden [32, 40], depth [2, 1], heads [2, 2], 5 classes (+ null)
  guide  input 4×4×6, patch 1, hidden [16, 40], depth [1, 1], heads [1, 2]: the smaller model
         of the same kind AutoGuidance uses

Files (< 2 MB together):
  main.safetensors, guide.safetensors   the state dicts (float32), official names
  reference.npz   x (B, C, H, W) NCHW, t (B,) float32 in [0, 1] (0 and 1 included; RAE's t,
                  t = 0 data), y (B,) int64 (5 = null), out (B, C, H, W) main's output,
                  out_guide the guide's;
                  z (S, C, H, W) the initial noise, ys (S,) labels, shift α, steps N (grid
                  points, N − 1 Euler steps), scale w, samples (S, C, H, W) Euler ODE from z
                  without guidance, samples_ag with AutoGuidance (forward_with_autoguidance,
                  guide above, scale w, interval (0, 1)), grid (N,) the sampler's time points
"""

from __future__ import annotations

import argparse
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).parent / "fixtures" / "dit_dh"


class PatchEmbed(nn.Module):
    """timm 1.0's PatchEmbed with its defaults (flatten=True, no norm, bias)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, bias=True):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def _stub_imports() -> None:
    vit = types.ModuleType("timm.models.vision_transformer")
    vit.PatchEmbed, vit.Mlp, vit.Attention = PatchEmbed, nn.Module, nn.Module
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.models, models.vision_transformer = models, vit
    regex = types.ModuleType("regex")
    regex.B = None
    transformers = types.ModuleType("transformers")
    transformers.SwinModel = None
    sys.modules.update({"timm": timm, "timm.models": models,
                        "timm.models.vision_transformer": vit, "regex": regex,
                        "transformers": transformers})


def _randomize(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in ("pos_embed", "t_embedder.W"):
                continue  # fixed tables the constructor makes
            scale = 0.5 / math.sqrt(p.shape[-1]) if p.ndim > 1 else 0.1
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(1.0 + noise if name.endswith("norm1.weight") or name.endswith("norm2.weight")
                    or name.endswith("norm_final.weight") else noise)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rae", required=True, help="a checkout of github.com/bytetriper/RAE")
    args = parser.parse_args()
    _stub_imports()
    sys.path.insert(0, str(Path(args.rae) / "src"))
    from stage2.models.DDT import DiTwDDTHead
    from stage2.transport import Sampler, create_transport

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    common = dict(input_size=4, patch_size=1, in_channels=6, mlp_ratio=4.0, num_classes=5,
                  class_dropout_prob=0.1)
    main_net = DiTwDDTHead(hidden_size=[32, 40], depth=[2, 1], num_heads=[2, 2], **common)
    guide = DiTwDDTHead(hidden_size=[16, 40], depth=[1, 1], num_heads=[1, 2], **common)
    for net in (main_net, guide):
        _randomize(net, gen)
        net.eval()

    b, c = 6, 6
    x = torch.randn(b, c, 4, 4, generator=gen)
    t = torch.tensor([0.0, 0.1, 0.35, 0.6, 0.9, 1.0])
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        out, out_guide = main_net(x, t, y), guide(x, t, y)

    # The official sampler: Euler on its grid of `steps` points, α-shifted.
    shift, steps, scale = 2.5, 6, 1.42
    transport = create_transport(path_type="Linear", prediction="velocity",
                                 time_dist_type="uniform", time_dist_shift=shift)
    sample_fn = Sampler(transport).sample_ode(sampling_method="euler", num_steps=steps)
    z = torch.randn(3, c, 4, 4, generator=gen)
    ys = torch.tensor([0, 3, 4])
    with torch.no_grad():
        samples = sample_fn(z, main_net.forward, y=ys)[-1]
        samples_ag = sample_fn(z, main_net.forward_with_autoguidance, y=ys, cfg_scale=scale,
                               additional_model_forward=guide.forward, cfg_interval=(0.0, 1.0))[-1]
    t0, t1 = transport.check_interval(transport.train_eps, transport.sample_eps, sde=False,
                                      eval=True, reverse=False, last_step_size=0.0)
    grid = 1 - torch.linspace(t0, t1, steps)
    grid = shift * grid / (1 + (shift - 1) * grid)

    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in
              (("main", main_net), ("guide", guide))}
    xl = DiTwDDTHead(input_size=16, in_channels=768)  # the released XL at 256² (defaults)
    s = DiTwDDTHead(input_size=16, in_channels=768, hidden_size=[384, 2048], depth=[12, 2],
                    num_heads=[6, 16])
    counts["XL"] = sum(p.numel() for p in xl.parameters())
    counts["S"] = sum(p.numel() for p in s.parameters())
    print("parameters (module.parameters()):", counts)

    OUT.mkdir(parents=True, exist_ok=True)
    for name, net in (("main", main_net), ("guide", guide)):
        save_file({k: v.contiguous() for k, v in net.state_dict().items()},
                  str(OUT / f"{name}.safetensors"))
    np.savez(OUT / "reference.npz", x=x.numpy(), t=t.numpy(), y=y.numpy(), out=out.numpy(),
             out_guide=out_guide.numpy(), z=z.numpy(), ys=ys.numpy(), shift=shift, steps=steps,
             scale=scale, samples=samples.numpy(), samples_ag=samples_ag.numpy(),
             grid=grid.numpy(), **{f"params_{k}": v for k, v in counts.items()})
    print("grid:", grid.numpy())
    print("written to", OUT, sorted(f.name for f in OUT.iterdir()))


if __name__ == "__main__":
    main()
