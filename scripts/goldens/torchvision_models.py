"""Golden gradients for torchvision architectures, from PyTorch autograd.

For each model (random weights, seeded; eval mode) writes, into the output
directory (default target/goldens):
    <name>.onnx           exported with torch.onnx (opset 17, dynamic batch)
    <name>_golden.npz     x [2,3,H,W] in [0,1], y [2], logits, grad_ce = d(sum CE)/dx (float64 autograd)
The files are large (tens of MB), so they are generated, not checked in:
    .venv/bin/python scripts/goldens/torchvision_models.py [OUT_DIR]
tests/integration/grad.rs reads them (scripts/test.sh generates them first).

Small inputs keep it quick: 32x32 for the CIFAR-stem ResNet-18, 64x64 for the
ImageNet-stem models. VGG-11-BN keeps its feature extractor and gets a small
classifier (512 -> 64 -> 10) instead of the 25088 -> 4096 -> 4096 one, whose
120M parameters are all Linear/ReLU/Dropout already covered by other models.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def resnet18_cifar():
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model, 32


def vgg11_bn_small():
    model = torchvision.models.vgg11_bn(num_classes=10)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Linear(512, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))
    return model, 64


def small_vit():
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )
    # torchvision zero-initialises the head, which would make every input gradient zero.
    nn.init.normal_(model.heads.head.weight, std=0.2)
    return model, 32


MODELS = {
    "resnet18_cifar": resnet18_cifar,
    "resnet18_imagenet": lambda: (torchvision.models.resnet18(num_classes=10), 64),
    "vgg11_bn": vgg11_bn_small,
    "mobilenet_v2": lambda: (torchvision.models.mobilenet_v2(num_classes=10), 64),
    "efficientnet_b0": lambda: (torchvision.models.efficientnet_b0(num_classes=10), 64),
    "densenet121": lambda: (torchvision.models.densenet121(num_classes=10), 64),
    "convnext_tiny": lambda: (torchvision.models.convnext_tiny(num_classes=10), 64),
    "vit_small": small_vit,
}


def randomise_batchnorm_statistics(model):
    """Fresh BatchNorm layers have mean 0, var 1: make the inference form non-trivial."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def input_gradient(model, x, y):
    """d(sum CE)/dx in float64, the reference the ONNX graphs are compared with."""
    xg = x.double().clone().requires_grad_(True)
    F.cross_entropy(model(xg), y, reduction="sum").backward()
    return xg.grad


def well_conditioned_input(model, size, generator):
    """Draws x until the gradient is stable under 1e-6 nudges of the input.

    ReLU and max-pooling networks are piecewise linear: at a point within
    float32 rounding of a kink (a pre-activation near 0, two near-equal maxima
    in a pooling window), implementations that round differently (an exported
    graph with BatchNorm folded into the convolutions, say) legitimately
    differ in which side of the kink they compute, and comparing gradients
    there tests nothing. In deep ReLU networks a good fraction of random
    inputs lie that close to some kink (a 1e-6 nudge moves the gradient by
    1e-3 to 5e-2), so we draw until three random 1e-6 nudges leave it within
    1e-4, and record how many draws that took.
    """
    y = torch.tensor([1, 7])
    for attempt in range(40):
        x = torch.rand(2, 3, size, size, generator=generator)
        g0 = input_gradient(model, x, y)
        stable = True
        for _ in range(3):
            nudge = 1e-6 * torch.sign(torch.rand(x.shape, generator=generator) - 0.5)
            g1 = input_gradient(model, x + nudge, y)
            stable &= ((g1 - g0).abs().max() / g0.abs().max()).item() < 1e-4
        if stable:
            return x, y, attempt
    raise RuntimeError("no well-conditioned input found")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "goldens")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    for name, make in MODELS.items():
        torch.manual_seed(0)
        model, size = make()
        randomise_batchnorm_statistics(model)
        model.eval()
        x, y, redraws = well_conditioned_input(model.double(), size, torch.Generator().manual_seed(1))
        grad = input_gradient(model, x, y).float()
        model.float()
        with torch.no_grad():
            logits = model(x)
        torch.onnx.export(
            model, x, os.path.join(out, f"{name}.onnx"), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False,
        )
        np.savez(os.path.join(out, f"{name}_golden.npz"), x=x.numpy(), y=y.numpy(), logits=logits.numpy(), grad_ce=grad.numpy())
        print(f"{name}: {size}x{size}, {redraws} input(s) redrawn", flush=True)


if __name__ == "__main__":
    main()
