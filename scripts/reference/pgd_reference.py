"""Independent reference for upat-audit's PGD, and a timing comparison.

Runs PGD in PyTorch on the same Fashion-MNIST model (weights read from
models/fmnist-cnn.onnx) and the same first N test images, with the same eps,
step size and steps, in two independent implementations:
  - a plain PyTorch implementation written here (uniform / Gaussian random
    start, sign or normalised-gradient steps, projection; a sample counts as
    fooled if any iterate is misclassified, upat's rule);
  - torchattacks 3.5.1 (PGD, PGDL2), which judges the final iterate only;
then runs upat-audit on the same model and data and prints robust accuracies
side by side, and the time upat-audit's attack took against the PyTorch one.

    source scripts/env.sh && cargo build --features train
    .venv/bin/pip install -r scripts/reference/requirements.txt
    .venv/bin/python scripts/reference/pgd_reference.py [--samples 1000] [--backend ort]
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models"))
import fmnist_cnn  # noqa: E402

ATTACKS = [
    # id, norm, eps, steps, step size
    ("pgd20-linf-8", "linf", 8 / 255, 20, 2 / 256),
    ("pgd20-linf-0.1", "linf", 0.1, 20, 0.01),
    ("pgd-l2-0.5", "l2", 0.5, 20, 0.0625),
    ("pgd-l2-1.5", "l2", 1.5, 20, 0.1875),
]


def load_model():
    model = fmnist_cnn.FmnistCnn()
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(os.path.join(ROOT, "models", "fmnist-cnn.onnx")).graph.initializer}
    model.load_state_dict({k: weights[k] for k in model.state_dict()})
    return model.eval()


def project(x, x0, eps, norm):
    delta = x - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        length = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        delta = delta * (eps / length).clamp(max=1.0)
    return (x0 + delta).clamp(0, 1)


def pgd_any_iterate(model, x0, y, norm, eps, steps, alpha, generator):
    """PGD counting a sample as fooled if any iterate is misclassified."""
    if norm == "linf":
        x = x0 + eps * (2 * torch.rand(x0.shape, generator=generator) - 1)
    else:
        direction = torch.randn(x0.shape, generator=generator)
        direction /= direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x = x0 + eps * torch.rand(len(x0), 1, 1, 1, generator=generator) * direction
    x = project(x, x0, eps, norm)
    fooled = torch.zeros(len(x0), dtype=torch.bool)
    for step in range(steps + 1):
        x = x.detach().requires_grad_(True)
        logits = model(x)
        fooled |= logits.argmax(1) != y
        if step == steps:
            break
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x)
        if norm == "linf":
            step_dir = grad.sign()
        else:
            step_dir = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        x = project(x.detach() + alpha * step_dir, x0, eps, norm)
    return fooled


def robust_accuracy_reference(model, x, y, norm, eps, steps, alpha, batch=128):
    generator = torch.Generator().manual_seed(0)
    robust = 0
    started = time.perf_counter()
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        with torch.no_grad():
            correct = model(xb).argmax(1) == yb
        fooled = pgd_any_iterate(model, xb[correct], yb[correct], norm, eps, steps, alpha, generator)
        robust += int((~fooled).sum())
    return robust / len(x), time.perf_counter() - started


def robust_accuracy_torchattacks(model, x, y, norm, eps, steps, alpha):
    import torchattacks

    torch.manual_seed(0)
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps) if norm == "linf" else torchattacks.PGDL2(model, eps=eps, alpha=alpha, steps=steps)
    robust = 0
    for i in range(0, len(x), 128):
        xb, yb = x[i:i + 128], y[i:i + 128]
        adv = attack(xb, yb)
        with torch.no_grad():
            robust += int((model(adv).argmax(1) == yb).sum())
    return robust / len(x)


def upat(samples, backend):
    suite = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    suite.write('name = "reference"\n')
    for attack_id, norm, eps, steps, alpha in ATTACKS:
        suite.write(f'[[attack]]\nid = "{attack_id}"\nkind = "pgd"\nnorm = "{norm}"\neps = {eps!r}\nsteps = {steps}\nstep_size = {alpha!r}\n')
    suite.close()
    out = tempfile.mkdtemp()
    subprocess.run([os.path.join(ROOT, "target", "debug", "upat-audit"), os.path.join(ROOT, "models", "fmnist-cnn.onnx"), "--data", "fashion-mnist",
                    "--samples", str(samples), "--suite", suite.name, "--backend", backend, "--out", out], check=True, capture_output=True)
    with open(os.path.join(out, "report.csv")) as f:
        return {row["attack_id"]: row for row in csv.DictReader(f)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    x, y = fmnist_cnn.load(args.data, "t10k")
    x, y = x[:args.samples], y[:args.samples]
    model = load_model()
    for p in model.parameters():
        p.requires_grad_(False)
    ours = upat(args.samples, args.backend)
    print(f"Fashion-MNIST CNN (models/fmnist-cnn.onnx), first {args.samples} test images, {os.cpu_count()} cores, upat on {args.backend}")
    print(f"{'attack':<16} {'upat':>7} {'torch ref':>9} {'torchattacks':>12} {'upat s':>7} {'torch s':>7} {'time ratio':>10}")
    for attack_id, norm, eps, steps, alpha in ATTACKS:
        reference, seconds = robust_accuracy_reference(model, x, y, norm, eps, steps, alpha)
        library = robust_accuracy_torchattacks(model, x, y, norm, eps, steps, alpha)
        row = ours[attack_id]
        upat_seconds = float(row["seconds"])
        print(f"{attack_id:<16} {float(row['robust_acc']):>7.3f} {reference:>9.3f} {library:>12.3f} {upat_seconds:>7.2f} {seconds:>7.2f} {seconds / upat_seconds:>9.2f}x")


if __name__ == "__main__":
    main()
