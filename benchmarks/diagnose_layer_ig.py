"""Why layer IG "disagrees" with Captum on a GPU: cuDNN's choice of convolution algorithm.

    python -m benchmarks.diagnose_layer_ig          # needs CUDA, torchvision and captum

Compares xattr's and Captum's layer IG at ResNet-50's layer3 (random weights, batch 8, 224 px,
n_steps=50) in float32 with cudnn.benchmark (the timing setting), in float32 with deterministic
cuDNN algorithms, and in float64; TF32 is off throughout. On one H100 (2026-11-23) the max abs
differences were 3.3e-03, 3.1e-07 and 1.3e-10 (max |attr| 0.19): the benchmark's algorithms are
less accurate, not the method different. xattr against itself with another chunk size is printed
as a scale for float32 noise.
"""

from __future__ import annotations

import warnings

import torch

import xattr
from xattr.testing.vision import models


def compare(deterministic: bool, dtype: torch.dtype) -> str:
    from captum.attr import LayerIntegratedGradients  # noqa: PLC0415

    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, not deterministic
    torch.manual_seed(0)
    model = models().resnet50().eval().to("cuda", dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 224, 224, generator=gen).to("cuda", dtype)
    y = torch.randint(0, 10, (8,), generator=gen).cuda()
    split = xattr.at_layer(xattr.target(model, y), model.layer3)
    ours = xattr.layer_integrated_gradients(split, n_steps=50)(x)
    other_chunks = xattr.layer_integrated_gradients(split, n_steps=50, chunk_size=400)(x)
    theirs = LayerIntegratedGradients(model, model.layer3).attribute(x, target=y, n_steps=50)
    return (f"deterministic={deterministic} {dtype}: max |xattr - Captum| {float((ours - theirs).abs().max()):.2e}, "
            f"max |attr| {float(theirs.abs().max()):.2e}, max |xattr - xattr(chunk_size=400)| "
            f"{float((ours - other_chunks).abs().max()):.2e}")


def main() -> None:
    if not torch.cuda.is_available() or models() is None:
        print("needs a CUDA device and torchvision")
        return
    warnings.filterwarnings("ignore")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    for deterministic in (False, True):
        for dtype in (torch.float32, torch.float64):
            print(compare(deterministic, dtype), flush=True)


if __name__ == "__main__":
    main()
