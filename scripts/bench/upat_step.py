"""Benchmark: UPAT training-step throughput, upat-train (tch) vs the same step
written in PyTorch, same width, batch and K, same machine, same run.

    source scripts/env.sh && cargo build --features train --example bench_upat_step
    .venv/bin/python scripts/bench/upat_step.py [--width 16] [--batch 128] [--steps 5] [--iterations 5] [--rounds 3]
        [--device cpu|cuda] [--upat target/debug/examples/bench_upat_step]

The step: two SimCLR views (resized crop + flip via affine_grid, colour jitter
with YIQ hue rotation, random grey, per-sample Gaussian blur), K steps of the
instance-level l-inf PGD on t'(x) against t(x) (NT-Xent, train mode), the UPAT
loss L(t, adv) + lambda * L(t', adv), backward, SGD (momentum 0.9, wd 1e-3).
Random 3x32x32 data; ResNet-18 CIFAR stem at the given width.
"""

import argparse
import math
import os
import re
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.c2, self.b2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.short = None
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(h + (self.short(x) if self.short is not None else x))


class Net(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks, c = [], width
        for mult, stride in [(1, 1), (2, 2), (4, 2), (8, 2)]:
            for b in range(2):
                blocks.append(Block(c, width * mult, stride if b == 0 else 1))
                c = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.projector = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, 128))

    def forward(self, x):
        h = self.blocks(self.stem((x - 0.5) / 0.25))
        return self.projector(F.adaptive_avg_pool2d(h, 1).flatten(1))


def nt_xent(a, b, tau=0.5):
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    sim = (z @ z.t() / tau).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    return F.cross_entropy(sim, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]))


def grey(x):
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def view(x):
    n = x.shape[0]
    area = torch.rand(n) * 0.8 + 0.2
    ratio = torch.exp(torch.rand(n) * (math.log(4 / 3) - math.log(3 / 4)) + math.log(3 / 4))
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx, cy = (torch.rand(n) * 2 - 1) * (1 - w), (torch.rand(n) * 2 - 1) * (1 - h)
    flip = (torch.rand(n) < 0.5).float() * -2 + 1
    zeros = torch.zeros(n)
    theta = torch.stack([w * flip, zeros, cx, zeros, h, cy], 1).view(n, 2, 3)
    v = F.grid_sample(x, F.affine_grid(theta, x.shape, align_corners=False), padding_mode="border", align_corners=False)
    f = lambda: (torch.rand(n) * 0.8 + 0.6).view(n, 1, 1, 1)
    j = (v * f()).clamp(0, 1)
    m = grey(j).mean((1, 2, 3), keepdim=True)
    j = (m + f() * (j - m)).clamp(0, 1)
    g = grey(j)
    j = (g + f() * (j - g)).clamp(0, 1)
    angle = (torch.rand(n) * 0.2 - 0.1) * 2 * math.pi
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    c, s, one, zero = angle.cos(), angle.sin(), torch.ones(n), torch.zeros(n)
    rot = torch.stack([one, zero, zero, zero, c, -s, zero, s, c], 1).view(n, 3, 3)
    j = (torch.linalg.inv(yiq) @ rot @ yiq @ j.reshape(n, 3, -1)).reshape(v.shape).clamp(0, 1)
    coin = lambda p: (torch.rand(n) < p).float().view(n, 1, 1, 1)
    v = v + coin(0.8) * (j - v)
    v = v + coin(0.2) * (grey(v).expand_as(v) - v)
    radius = max(1, round(min(x.shape[2:]) * 0.1 / 2))
    sigma = (torch.rand(n) * 1.9 + 0.1).view(n, 1)
    k = torch.exp(-(torch.arange(-radius, radius + 1.0).view(1, -1) ** 2) / (2 * sigma**2))
    k = (k / k.sum(1, keepdim=True)).unsqueeze(1).expand(n, 3, -1).reshape(n * 3, 1, 1, -1)
    planes = v.reshape(1, n * 3, *v.shape[2:])
    planes = F.conv2d(F.pad(planes, (radius, radius, 0, 0), mode="reflect"), k, groups=n * 3)
    planes = F.conv2d(F.pad(planes, (0, 0, radius, radius), mode="reflect"), k.transpose(2, 3), groups=n * 3)
    return (v + coin(0.5) * (planes.reshape(v.shape) - v)).clamp(0, 1)


def upat_step(net, opt, x, steps, eps=0.03, alpha=2 / 256, lam=1 / 256):
    t, tp = view(x), view(x)
    z_t = net(t)  # the attack's target and the loss's first view, computed once
    target = z_t.detach()
    adv = tp.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(nt_xent(net(adv), target), adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), tp - eps), tp + eps).clamp(0, 1)
    z_adv = net(adv)
    loss = nt_xent(z_t, z_adv) + lam * nt_xent(net(tp), z_adv)
    opt.zero_grad()
    loss.backward()
    opt.step()


def synchronize(device):
    if device == "cuda":
        torch.cuda.synchronize()


def pytorch_rate(args, net, opt, x):
    synchronize(args.device)
    started = time.perf_counter()
    for _ in range(args.iterations):
        upat_step(net, opt, x, args.steps)
    synchronize(args.device)
    return args.batch * args.iterations / (time.perf_counter() - started)


def upat_rate(args):
    command = [args.upat, str(args.width), str(args.batch), str(args.steps), str(args.iterations), args.device]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(re.search(r"images_per_second=([0-9.]+)", out).group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="alternating PyTorch/upat rounds; medians are compared")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--upat", default="target/debug/examples/bench_upat_step", help="the built example")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    # Every tensor the step makes (the views' random draws too) lands on the device.
    torch.set_default_device(args.device)
    # libtorch's defaults (TF32 in cuDNN convolutions, none in matmul) hold on both sides.
    torch.manual_seed(0)
    net = Net(args.width).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = torch.rand(args.batch, 3, 32, 32)
    upat_step(net, opt, x, args.steps)  # warm-up
    # Alternating rounds, so a slower or busier stretch of the machine hits both.
    reference, ours = [], []
    for _ in range(args.rounds):
        reference.append(pytorch_rate(args, net, opt, x))
        ours.append(upat_rate(args))
    ref_median, our_median = statistics.median(reference), statistics.median(ours)
    print(f"UPAT step, ResNet-18 width {args.width}, batch {args.batch}, K={args.steps}, 3x32x32, {args.device}, {os.cpu_count()} cores, "
          f"{args.rounds} rounds of {args.iterations} steps")
    print(f"PyTorch {torch.__version__}: {ref_median:8.1f} images/s (rounds: {', '.join(f'{r:.1f}' for r in reference)})")
    print(f"upat-train (tch):  {our_median:8.1f} images/s (rounds: {', '.join(f'{r:.1f}' for r in ours)})")
    print(f"ratio upat / PyTorch (medians): {our_median / ref_median:.2f}")


if __name__ == "__main__":
    main()
