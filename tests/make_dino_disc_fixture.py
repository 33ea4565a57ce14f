"""Writes tests/fixtures/dino_disc/: a tiny random instance of the official RAE discriminator
(bytetriper/RAE src/disc/dinodisc.py: frozen DINO ViT + spectrally normalized 1-D conv heads),
its outputs, and DiffAug on fixed draws. Run once by a developer, not in CI:

    .venv/bin/python tests/make_dino_disc_fixture.py --rae-src DIR [--out tests/fixtures/dino_disc]

Produced with torch 2.13.0 (CPU), numpy 2.4.6, safetensors 0.8.0, and --rae-src the `src/`
folder of github.com/bytetriper/RAE at a4d18c4 (its DinoDisc and DiffAug are imported from
there). The recipe is a tiny one added to its `recipes` table: width 32, 3 blocks, 2 heads,
patch 8, 224² input (28 × 28 tokens), key depths (0, 2), ks 9; everything else as the official
S_8 discriminator.

Files:
  dino.safetensors   the DINO backbone in the DINO release's names (cls_token, pos_embed,
                     patch_embed.proj.*, blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,fc2}.*,
                     norm.*), random, with a non-zero key bias (DinoDisc zeroes it on load)
  heads.safetensors  DinoDisc.state_dict() (heads.*: weight_orig, weight_u, weight_v, bias,
                     BatchNormLocal weight/bias), random
  outputs.npz        images_u8 (2, 64, 64, 3) → images (k + ½)/128 − 1; logits_eval (2, 3·784)
                     (eval mode: stored u, v); logits_train, the logits of one train-mode call
                     (one power iteration) and u_after_<name> the updated u of each spectral
                     conv; diffaug: aug_x (2, 32, 32, 3), aug_apply (3,) bool, aug_r (7, 2), and
                     aug_out_cut0 / aug_out_cut25 (cutout ratio 0 and 0.25). References in
                     float64.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

TINY = {"depth": 3, "key_depths": (0, 2), "norm_eps": 1e-6, "patch_size": 8, "in_chans": 3,
        "embed_dim": 32, "num_heads": 2, "mlp_ratio": 4.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rae-src", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "fixtures" / "dino_disc")
    args = ap.parse_args()
    sys.path.insert(0, str(args.rae_src))
    # disc/__init__.py imports its LPIPS, which imports torchvision (not installable next to
    # the CPU torch 2.13 here, and unused by the discriminator): an empty stand-in.
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    sys.modules["torchvision"].models = types.SimpleNamespace()
    from disc import dinodisc
    from disc.diffaug import DiffAug

    dinodisc.recipes["T_8"] = TINY
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    backbone = dinodisc.FrozenDINONoDrop(**TINY)
    state = {}
    for k, v in backbone.state_dict().items():
        if k in ("x_scale", "x_shift"):
            continue
        std = 1.0 / max(1, v[0].numel()) ** 0.5 if v.ndim >= 2 and "token" not in k and \
            "pos" not in k else 0.3
        state[k] = torch.randn(v.shape, generator=g, dtype=torch.float32) * std
        if "norm" in k and k.endswith("weight"):
            state[k] += 1.0
    save_file(state, str(out / "dino.safetensors"))
    work = Path(tempfile.mkdtemp())
    torch.save({k: v.clone() for k, v in state.items()}, work / "dino.pth")
    disc = dinodisc.DinoDisc(torch.device("cpu"), str(work / "dino.pth"), ks=9,
                             key_depths=(0, 2), recipe="T_8")
    with torch.no_grad():
        for name, p in disc.heads.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 1.0))
            if name.endswith("1.weight") and p.ndim == 1:
                p.add_(1.0)
        for name, b in disc.heads.named_buffers():
            if name.endswith(("weight_u", "weight_v")):
                b.copy_(torch.nn.functional.normalize(torch.randn(b.shape, generator=g), dim=0))
    save_file({k: v.contiguous() for k, v in disc.state_dict().items()},
              str(out / "heads.safetensors"))

    rng = np.random.default_rng(0)
    images_u8 = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy((images_u8.astype(np.float64) + 0.5) / 128.0 - 1.0).permute(0, 3, 1, 2)
    disc.double()
    disc.dino_proxy[0].double()
    res = {"images_u8": images_u8}
    disc.eval()
    with torch.no_grad():
        res["logits_eval"] = disc(x).numpy()
        disc.train()
        res["logits_train"] = disc(x).numpy()
    for name, b in disc.heads.named_buffers():
        if name.endswith("weight_u"):
            res["u_after_" + name] = b.numpy().copy()

    aug_x = torch.from_numpy(rng.standard_normal((2, 3, 32, 32)))
    for ratio in (0.0, 0.25):
        torch.manual_seed(5)
        y = DiffAug(prob=1.0, cutout=ratio).aug(aug_x.float().double())
        torch.manual_seed(5)
        apply = (torch.rand(3) <= 1.0).numpy()
        r = torch.rand(7, 2, 1, 1).reshape(7, 2).numpy()
        res[f"aug_out_cut{int(ratio * 100)}"] = y.permute(0, 2, 3, 1).numpy()
    res["aug_x"] = aug_x.permute(0, 2, 3, 1).numpy()
    res["aug_apply"], res["aug_r"] = apply, r
    np.savez_compressed(out / "outputs.npz", **{k: np.asarray(v, np.float32)
                                                if np.asarray(v).dtype == np.float64 else v
                                                for k, v in res.items()})
    shutil.rmtree(work)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>9}  {f.name}")


if __name__ == "__main__":
    main()
