"""Agreement of upat-audit's AutoAttack (standard) with the reference
implementation (Croce & Hein's `autoattack` package), per component and
final, and the wall time of each.

As in apgd_reference.py, the reference is not vendored: fetch
github.com/fra31/auto-attack outside this repository and pass it with
--autoattack. The Fashion-MNIST CNNs in models/ are rebuilt in PyTorch from
their ONNX weights and checked against ONNX Runtime (1e-4) first. Both run
`version='standard'` on the first N test images at l-inf 0.1 and l2 1.5;
the reference's cumulative robust accuracy after each component is read from
its `run_standard_evaluation` bookkeeping.

    source scripts/env.sh && cargo build
    .venv/bin/python scripts/reference/autoattack_reference.py --autoattack /tmp/auto-attack [--samples 1000]
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models"))
sys.path.insert(0, os.path.dirname(__file__))
import fmnist_cnn  # noqa: E402
from apgd_reference import check_against_ort, load_model  # noqa: E402

MODELS = ["models/fmnist-cnn.onnx", "models/fmnist-cnn-at.onnx"]
BUDGETS = [("linf", 0.1, "aa-linf-0.1"), ("l2", 1.5, "aa-l2-1.5")]
COMPONENTS = ["apgd-ce", "apgd-t", "fab-t", "square"]


def reference(model, x, y, norm, eps, batch):
    """Cumulative robust accuracy after each component, and seconds."""
    from autoattack import AutoAttack

    adversary = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                           device="cpu", verbose=False, seed=0)
    cumulative = {}
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    started = time.time()
    seconds = {}
    for attack in COMPONENTS:
        adversary.attacks_to_run = [attack]
        idx = robust.nonzero().squeeze(1)
        t0 = time.time()
        if len(idx) > 0:
            adv = adversary.run_standard_evaluation(x[idx], y[idx], bs=batch)
            with torch.no_grad():
                still = model(adv).argmax(1) == y[idx]
            robust[idx] = still
        cumulative[attack] = float(robust.float().mean())
        seconds[attack] = time.time() - t0
    return cumulative, seconds, time.time() - started


def upat(model, samples, backend, batch):
    out = tempfile.mkdtemp()
    subprocess.run([os.path.join(ROOT, "target", "debug", "upat-audit"), os.path.join(ROOT, model), "--data", "fashion-mnist",
                    "--samples", str(samples), "--suite", "fashion-mnist-aa", "--backend", backend,
                    "--batch-size", str(batch), "--out", out], check=True, capture_output=True)
    with open(os.path.join(out, "report.csv")) as f:
        return {row["attack_id"]: row for row in csv.DictReader(f)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--autoattack", required=True, help="a checkout of github.com/fra31/auto-attack")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    sys.path.insert(0, args.autoattack)
    torch.set_num_threads(os.cpu_count() or 1)
    x, y = fmnist_cnn.load(args.data, "t10k")
    x, y = x[:args.samples], y[:args.samples]
    print(f"AutoAttack standard, first {args.samples} Fashion-MNIST test images, {os.cpu_count()} cores, upat on {args.backend}")
    print(f"{'model':<28} {'row':<22} {'upat':>7} {'reference':>9} {'upat s':>8} {'ref s':>8}")
    for path in args.models:
        model = load_model(os.path.join(ROOT, path))
        check_against_ort(model, os.path.join(ROOT, path), x)
        started = time.time()
        ours = upat(path, args.samples, args.backend, args.batch)
        upat_wall = time.time() - started
        for norm, eps, aa_id in BUDGETS:
            cumulative, seconds, total = reference(model, x, y, norm, eps, args.batch)
            for attack in COMPONENTS:
                row = ours[f"{aa_id}:{attack}"]
                print(f"{path:<28} {aa_id + ':' + attack:<22} {float(row['robust_acc']):>7.3f} {cumulative[attack]:>9.3f} "
                      f"{float(row['seconds']):>8.1f} {seconds[attack]:>8.1f}", flush=True)
            row = ours[aa_id]
            print(f"{path:<28} {aa_id:<22} {float(row['robust_acc']):>7.3f} {cumulative['square']:>9.3f} "
                  f"{float(row['seconds']):>8.1f} {total:>8.1f}   (time ratio {total / float(row['seconds']):.2f}x)", flush=True)
        print(f"{path}: upat-audit wall time {upat_wall:.1f}s for both budgets (process start and clean pass included)")


if __name__ == "__main__":
    main()
