"""Writes tests/fixtures/lpips/: the `lpips` package's LPIPS(net='vgg') outputs on fixed images
with random VGG16 weights (tests/lpips_weights.py, drawn from a seed on both sides) and the
package's own linear heads. Run once by a developer, not in CI:

    .venv/bin/python tests/make_lpips_fixture.py [--out tests/fixtures/lpips]

Produced with lpips 0.1.4, torch 2.13.0 (CPU), numpy 2.4.6. torchvision does not install next to
the CPU torch 2.13 wheel here (its operator library fails to load), so `torchvision.models.vgg16`
is provided to lpips by a stand-in module building vgg16().features as torchvision does
(configuration "D": 3×3 convolutions with padding 1, ReLU, 2×2 max-pooling, at the same indices);
the weights come from tests/lpips_weights.py.

Files:
  vgg.pth            the lpips package's weights/v0.1/vgg.pth (lin0…lin4.model.1.weight), as is
  vgg.safetensors    the same tensors (for tests without torch)
  outputs.npz        x_u8, y_u8 (2, 64, 64, 3) uint8 → images (k + ½)/128 − 1; distance (2,)
                     LPIPS(x, y) in float64 (the reference run in double precision); per_layer
                     (5, 2) its terms
The official RAE's LPIPS (src/disc/lpips.py, VQGAN's) computes the same function with the same
head file layout.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from lpips_weights import STAGES, random_vgg16_state


def _install_torchvision_standin() -> None:
    def vgg16(pretrained: bool = False, **_):
        assert not pretrained
        layers, cin = [], 3
        for s, stage in enumerate(STAGES):
            if s:
                layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
            for cout in stage:
                layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU(inplace=True)]
                cin = cout
        layers.append(torch.nn.MaxPool2d(kernel_size=2, stride=2))
        return types.SimpleNamespace(features=torch.nn.Sequential(*layers))

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(vgg16=vgg16)
    sys.modules["torchvision"] = tv


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "fixtures" / "lpips")
    args = ap.parse_args()
    _install_torchvision_standin()
    import lpips

    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    vgg = {k: torch.from_numpy(v) for k, v in random_vgg16_state(0).items()}
    slices = {}
    for k, v in vgg.items():  # features.{i}.X → net.slice{s}.{i}.X
        i = int(k.split(".")[1])
        s = 1 + sum(i >= b for b in (4, 9, 16, 23))
        slices[f"net.slice{s}.{i}.{k.split('.')[2]}"] = v
    missing, unexpected = model.load_state_dict(slices, strict=False)
    assert not unexpected and all(m.startswith(("lin", "scaling")) for m in missing), missing
    heads = Path(inspect.getfile(lpips.LPIPS)).parent / "weights" / "v0.1" / "vgg.pth"
    shutil.copy(heads, out / "vgg.pth")
    head_state = torch.load(heads, weights_only=True, map_location="cpu")  # saved on CUDA
    save_file({k: v.contiguous() for k, v in head_state.items()}, str(out / "vgg.safetensors"))

    rng = np.random.default_rng(1)
    x_u8 = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    y_u8 = np.clip(x_u8.astype(int) + rng.integers(-60, 61, x_u8.shape), 0, 255).astype(np.uint8)
    to = lambda u: torch.from_numpy((u.astype(np.float64) + 0.5) / 128.0 - 1.0).permute(0, 3, 1, 2)
    model.double()
    with torch.no_grad():
        d, layers = model(to(x_u8), to(y_u8), retPerLayer=True)
    np.savez_compressed(out / "outputs.npz", x_u8=x_u8, y_u8=y_u8,
                        distance=d.reshape(-1).numpy(),
                        per_layer=np.stack([t.reshape(-1).numpy() for t in layers]))
    print("distance", d.reshape(-1).numpy(), "lpips", lpips.__version__ if hasattr(
        lpips, "__version__") else "0.1.4", "torch", torch.__version__)


if __name__ == "__main__":
    main()
