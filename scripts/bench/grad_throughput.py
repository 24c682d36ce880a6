"""Benchmark: loss + input-gradient throughput, upat's gradient graph on ONNX
Runtime (CPU) vs PyTorch autograd, same model, same machine, same run.

    source scripts/env.sh && cargo build --release --example bench_grad
    .venv/bin/python scripts/bench/grad_throughput.py [--model resnet18|fmnist-cnn|fmnist-cnn-at]
        [--batch 128] [--iterations 10] [--backend ort|tract] [--threads N] [--profile release|debug]

resnet18 is ResNet-18 with the CIFAR stem (random weights), 32x32 inputs;
fmnist-cnn(-at) are the Fashion-MNIST CNNs of models/, rebuilt in PyTorch
from their ONNX weights. Both sides use --threads threads (default: every
core); weights do not require gradients on the PyTorch side either (an
attack needs only the input gradient).
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


def torch_throughput(model, shape, batch, iterations):
    x = torch.rand(batch, *shape)
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
    parser.add_argument("--model", default="resnet18", choices=["resnet18", "fmnist-cnn", "fmnist-cnn-at"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--profile", default="release", choices=["release", "debug"],
                        help="which build of the bench_grad example runs (timings: release)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "resnet18":
        model, _ = torchvision_models.resnet18_cifar()
        shape = (3, 32, 32)
        os.makedirs("target/bench", exist_ok=True)
        path = "target/bench/resnet18_cifar.onnx"
        torch.onnx.export(model.eval(), torch.rand(2, *shape), path, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    else:
        import onnx
        from onnx import numpy_helper
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models"))
        import fmnist_cnn
        path = os.path.join("models", args.model + ".onnx")
        weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}
        model = fmnist_cnn.FmnistCnn()
        model.load_state_dict({k: weights[k] for k in model.state_dict()})
        shape = (1, 28, 28)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    reference = torch_throughput(model, shape, args.batch, args.iterations)
    env = dict(os.environ, UPAT_BENCH_THREADS=str(args.threads))
    out = subprocess.run([f"target/{args.profile}/examples/bench_grad", path, ",".join(map(str, shape)), str(args.batch),
                          str(args.iterations), args.backend], check=True, capture_output=True, text=True, env=env).stdout
    ours = float(re.search(r"images_per_second=([0-9.]+)", out).group(1))
    print(f"{args.model}, batch {args.batch}, {args.threads} threads on each side")
    print(f"PyTorch {torch.__version__} autograd: {reference:8.1f} images/s")
    print(f"upat gradient graph on {args.backend}:  {ours:8.1f} images/s")
    print(f"ratio upat / PyTorch: {ours / reference:.2f}")


if __name__ == "__main__":
    main()
