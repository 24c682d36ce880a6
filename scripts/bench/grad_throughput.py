"""Benchmark: loss + input-gradient throughput, upat's gradient graph on ONNX
Runtime (CPU) vs PyTorch autograd, same model, same machine, same run.

    source scripts/env.sh && cargo build --example bench_grad
    .venv/bin/python scripts/bench/grad_throughput.py [--batch 128] [--iterations 10]

The model is ResNet-18 with the CIFAR stem (random weights), 32x32 inputs.
Both sides use every core; weights do not require gradients on the PyTorch
side either (an attack needs only the input gradient).
"""

import argparse
import os
import re
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "goldens"))
import torchvision_models  # noqa: E402


def torch_throughput(model, batch, iterations):
    x = torch.rand(batch, 3, 32, 32)
    y = torch.arange(batch) % 10

    def step():
        xg = x.clone().requires_grad_(True)
        F.cross_entropy(model(xg), y, reduction="sum").backward()
        return xg.grad

    step()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    return batch * iterations / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--backend", default="ort")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model, _ = torchvision_models.resnet18_cifar()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    os.makedirs("target/bench", exist_ok=True)
    path = "target/bench/resnet18_cifar.onnx"
    torch.onnx.export(model, torch.rand(2, 3, 32, 32), path, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    reference = torch_throughput(model, args.batch, args.iterations)
    out = subprocess.run(["target/debug/examples/bench_grad", path, "3,32,32", str(args.batch), str(args.iterations), args.backend],
                         check=True, capture_output=True, text=True).stdout
    ours = float(re.search(r"images_per_second=([0-9.]+)", out).group(1))
    print(f"ResNet-18 (CIFAR stem), batch {args.batch}, 32x32, {os.cpu_count()} cores")
    print(f"PyTorch {torch.__version__} autograd: {reference:8.1f} images/s")
    print(f"upat gradient graph on {args.backend}:  {ours:8.1f} images/s")
    print(f"ratio upat / PyTorch: {ours / reference:.2f}")


if __name__ == "__main__":
    main()
