"""Agreement of upat-audit's APGD-CE and APGD-T with the reference
implementation (Croce & Hein's `autoattack` package), and a timing
comparison.

The reference is not vendored: fetch github.com/fra31/auto-attack into a
directory of your choice (outside this repository) and pass it with
--autoattack. The Fashion-MNIST CNNs in models/ are rebuilt in PyTorch with
the weights of their ONNX files (models/fmnist_cnn.py), and their logits
checked against ONNX Runtime first. Each attack runs alone on the
clean-correct samples (as in `run_standard_evaluation_individual`), with
AutoAttack's standard settings: 100 iterations, 1 restart, ρ = 0.75,
9 target classes for APGD-T.

    source scripts/env.sh && cargo build --features train
    .venv/bin/python scripts/reference/apgd_reference.py --autoattack /tmp/auto-attack [--samples 1000]
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "models"))
sys.path.insert(0, os.path.join(ROOT, "scripts", "reference"))
import fmnist_cnn  # noqa: E402

MODELS = ["models/fmnist-cnn.onnx", "models/fmnist-cnn-at.onnx"]
BUDGETS = [("linf", 0.1), ("l2", 1.5)]


def load_model(path, device="cpu"):
    """The ONNX model as a frozen PyTorch module: the Fashion-MNIST CNN of
    models/ is rebuilt from its weights; any other model (one made by
    upat-train, say) goes through onnx2torch (PyPI; reference use only, so it
    is not in the CI venv: `pip install onnx2torch`)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    model = fmnist_cnn.FmnistCnn()
    if set(model.state_dict()) <= set(weights):
        model.load_state_dict({k: weights[k] for k in model.state_dict()})
    else:
        try:
            import onnx2torch
        except ImportError:
            sys.exit(f"{path} is not the Fashion-MNIST CNN: converting it needs onnx2torch (pip install onnx2torch)")
        model = onnx2torch.convert(path)
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_against_ort(model, path, x):
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    ort_logits = session.run(None, {name: x[:256].numpy()})[0]
    device = next(model.parameters()).device
    with torch.no_grad():
        ours = model(x[:256].to(device)).cpu().numpy()
    gap = float(np.abs(ort_logits - ours).max())
    assert gap < 1e-4, f"{path}: PyTorch rebuild differs from ONNX Runtime by {gap}"
    return gap


def reference_robust(model, x, y, norm, eps, targeted, batch=500):
    from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted

    norm_name = {"linf": "Linf", "l2": "L2"}[norm]
    if targeted:
        attack = APGDAttack_targeted(model, n_restarts=1, n_iter=100, eps=eps, norm=norm_name, eot_iter=1, rho=0.75, seed=0, device="cpu")
        attack.n_target_classes = 9
    else:
        attack = APGDAttack(model, n_restarts=1, n_iter=100, eps=eps, norm=norm_name, eot_iter=1, rho=0.75, seed=0, device="cpu", loss="ce")
    started = time.time()
    robust = 0
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    xs, ys = x[correct], y[correct]
    for i in range(0, len(xs), batch):
        adv = attack.perturb(xs[i:i + batch], ys[i:i + batch])
        with torch.no_grad():
            robust += int((model(adv).argmax(1) == ys[i:i + batch]).sum())
    return robust / len(x), time.time() - started


def upat(model, samples, backend):
    suite = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    suite.write('name = "apgd-reference"\n')
    for norm, eps in BUDGETS:
        for kind in ["apgd-ce", "apgd-t"]:
            suite.write(f'[[attack]]\nid = "{kind}-{norm}"\nkind = "{kind}"\nnorm = "{norm}"\neps = {eps!r}\n')
    suite.close()
    out = tempfile.mkdtemp()
    subprocess.run([os.path.join(ROOT, "target", "debug", "upat-audit"), os.path.join(ROOT, model), "--data", "fashion-mnist",
                    "--samples", str(samples), "--suite", suite.name, "--backend", backend, "--batch-size", "500", "--out", out],
                   check=True, capture_output=True)
    with open(os.path.join(out, "report.csv")) as f:
        return {row["attack_id"]: row for row in csv.DictReader(f)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--autoattack", required=True, help="a checkout of github.com/fra31/auto-attack")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    sys.path.insert(0, args.autoattack)
    torch.set_num_threads(os.cpu_count() or 1)
    x, y = fmnist_cnn.load(args.data, "t10k")
    x, y = x[:args.samples], y[:args.samples]
    print(f"first {args.samples} Fashion-MNIST test images, {os.cpu_count()} cores, upat on {args.backend}")
    print(f"{'model':<28} {'attack':<14} {'upat':>7} {'reference':>9} {'upat s':>7} {'ref s':>7} {'speed-up':>8}")
    for path in MODELS:
        model = load_model(os.path.join(ROOT, path))
        check_against_ort(model, os.path.join(ROOT, path), x)
        ours = upat(path, args.samples, args.backend)
        for norm, eps in BUDGETS:
            for kind in ["apgd-ce", "apgd-t"]:
                reference, seconds = reference_robust(model, x, y, norm, eps, kind == "apgd-t")
                row = ours[f"{kind}-{norm}"]
                upat_seconds = float(row["seconds"])
                print(f"{path:<28} {kind + ' ' + norm + ' ' + str(eps):<14} {float(row['robust_acc']):>7.3f} {reference:>9.3f} "
                      f"{upat_seconds:>7.1f} {seconds:>7.1f} {seconds / upat_seconds:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
