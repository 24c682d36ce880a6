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

    source scripts/env.sh && cargo build --features train
    .venv/bin/python scripts/reference/autoattack_reference.py --autoattack /tmp/auto-attack [--samples 1000]

The two sides can run apart (the reference on a GPU machine, say, where it
is fast; upat where it is built) and be compared afterwards:

    python3 autoattack_reference.py --side reference --device cuda --save ref.json ...
    .venv/bin/python scripts/reference/autoattack_reference.py --side upat --save upat.json ...
    .venv/bin/python scripts/reference/autoattack_reference.py --compare ref.json upat.json

Models other than the CNN of models/ are converted with onnx2torch.
"""

import argparse
import csv
import json
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


def reference(model, x, y, norm, eps, batch, device):
    """Cumulative robust accuracy after each component, and seconds."""
    from autoattack import AutoAttack

    adversary = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard",
                           device=device, verbose=False, seed=0)
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


def upat(binary, model, samples, backend, batch):
    out = tempfile.mkdtemp()
    subprocess.run([binary, os.path.abspath(model), "--data", "fashion-mnist",
                    "--samples", str(samples), "--suite", "fashion-mnist-aa", "--backend", backend,
                    "--batch-size", str(batch), "--out", out], check=True, capture_output=True)
    with open(os.path.join(out, "report.csv")) as f:
        return {row["attack_id"]: row for row in csv.DictReader(f)}


def run_reference(args, x, y):
    """{model: {aa_id: {"rows": {component: acc}, "seconds": {...}, "total": s}}}, saved (with --save)
    after each model so that a run cut short keeps what it finished."""
    results = {}
    for path in args.models:
        model = load_model(path, args.device)
        gap = check_against_ort(model, path, x)
        print(f"{path}: PyTorch model within {gap:.1e} of ONNX Runtime", flush=True)
        xd, yd = x.to(args.device), y.to(args.device)
        key = os.path.basename(path)
        results[key] = {}
        for norm, eps, aa_id in BUDGETS:
            cumulative, seconds, total = reference(model, xd, yd, norm, eps, args.batch, args.device)
            results[key][aa_id] = {"rows": cumulative, "seconds": seconds, "total": total}
            print(f"{path} {aa_id}: {cumulative} in {total:.1f}s", flush=True)
            if args.save and args.side == "reference":
                with open(args.save, "w") as f:
                    json.dump(results, f, indent=1)
    return results


def run_upat(args):
    """{model: {aa_id: {"rows": {component: acc}, "seconds": {...}, "total": s}}, "wall": s}"""
    results = {}
    for path in args.models:
        started = time.time()
        rows = upat(args.upat_audit, path, args.samples, args.backend, args.batch)
        key = os.path.basename(path)
        results[key] = {"wall": time.time() - started}
        for _, _, aa_id in BUDGETS:
            results[key][aa_id] = {
                "rows": {c: float(rows[f"{aa_id}:{c}"]["robust_acc"]) for c in COMPONENTS},
                "seconds": {c: float(rows[f"{aa_id}:{c}"]["seconds"]) for c in COMPONENTS},
                "total": float(rows[aa_id]["seconds"]),
                "final": float(rows[aa_id]["robust_acc"]),
            }
        print(f"{path}: upat-audit wall time {results[key]['wall']:.1f}s for both budgets", flush=True)
    return results


def compare(ref, ours):
    print(f"{'model':<28} {'row':<22} {'upat':>7} {'reference':>9} {'upat s':>8} {'ref s':>8}")
    for path in ours:
        if path not in ref:
            continue
        for _, _, aa_id in BUDGETS:
            r, u = ref[path][aa_id], ours[path][aa_id]
            for c in COMPONENTS:
                print(f"{path:<28} {aa_id + ':' + c:<22} {u['rows'][c]:>7.3f} {r['rows'][c]:>9.3f} "
                      f"{u['seconds'][c]:>8.1f} {r['seconds'][c]:>8.1f}")
            print(f"{path:<28} {aa_id:<22} {u['final']:>7.3f} {r['rows']['square']:>9.3f} "
                  f"{u['total']:>8.1f} {r['total']:>8.1f}   (time ratio {r['total'] / u['total']:.2f}x)", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--autoattack", help="a checkout of github.com/fra31/auto-attack")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--models", nargs="*", default=[os.path.join(ROOT, m) for m in MODELS])
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--device", default="cpu", help="where the reference runs (cpu, cuda)")
    parser.add_argument("--upat-audit", default=os.path.join(ROOT, "target", "debug", "upat-audit"))
    parser.add_argument("--side", choices=["both", "reference", "upat"], default="both")
    parser.add_argument("--save", help="write this side's results as JSON")
    parser.add_argument("--compare", nargs=2, metavar=("REFERENCE_JSON", "UPAT_JSON"))
    args = parser.parse_args()
    if args.compare:
        with open(args.compare[0]) as f, open(args.compare[1]) as g:
            compare(json.load(f), json.load(g))
        return
    args.models = [os.path.abspath(m) for m in args.models]
    results = {}
    if args.side in ("both", "upat"):
        results["upat"] = run_upat(args)
    if args.side in ("both", "reference"):
        if not args.autoattack:
            parser.error("the reference side needs --autoattack")
        sys.path.insert(0, args.autoattack)
        torch.set_num_threads(os.cpu_count() or 1)
        # TF32 convolutions and products would move the logits by ~1e-3,
        # well past the 1e-4 the ONNX check allows.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        x, y = fmnist_cnn.load(args.data, "t10k")
        print(f"AutoAttack standard, first {args.samples} Fashion-MNIST test images, reference on {args.device}", flush=True)
        results["reference"] = run_reference(args, x[:args.samples], y[:args.samples])
    if args.save:
        with open(args.save, "w") as f:
            json.dump(results[args.side] if args.side != "both" else results, f, indent=1)
    if args.side == "both":
        compare(results["reference"], results["upat"])


if __name__ == "__main__":
    main()
