"""Gradient coverage on a zoo of timm architectures, by exporter.

Each architecture (random weights, seeded) is exported twice, with
`torch.onnx.export(dynamo=False)` at opset 17 and with the default dynamo
exporter (its default opset; external data as it writes it). For each
export, `upat-audit grad` builds the gradient graph (or names the op that
blocks it); ONNX Runtime runs it on two seeded images, and the input
gradient of the summed cross-entropy is compared with float64 PyTorch
autograd of the exported graph itself, converted back with onnx2torch (so
the exporter's own float32 rewrites, such as BatchNorm folded into Conv,
cannot flip a ReLU between the two sides). Where onnx2torch cannot convert
the graph, the reference is the timm model in float64 and the row says so.

    .venv/bin/pip install timm onnx2torch
    .venv/bin/python scripts/experiments/timm_zoo.py [--upat-audit target/debug/upat-audit] [ARCH...]

Prints one row per export and a pass rate per exporter (relative error
<= 1e-4). Not a test: it takes tens of minutes on 2 cores.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

ARCHS = [
    "resnet18", "resnet50d", "densenet121", "efficientnet_b0", "mobilenetv2_100",
    "mobilenetv3_small_100", "mobilenetv4_conv_small", "convnext_atto", "regnetx_002",
    "repvgg_a0", "ghostnet_100", "rexnet_100", "lcnet_050", "dla34", "cspresnet50",
    "vit_tiny_patch16_224", "deit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
    "pvt_v2_b0", "xcit_nano_12_p16_224", "edgenext_xx_small", "coatnet_nano_rw_224",
    "maxvit_nano_rw_256", "tiny_vit_5m_224", "poolformer_s12", "levit_128s",
    "mobilevit_xxs", "efficientformer_l1", "fastvit_t8", "gcvit_xxtiny",
]
THRESHOLD = 1e-4


def export(model, x, path, dynamo):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), path, input_names=["input"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("N", min=1, max=64)}})
        else:
            torch.onnx.export(model, x, path, input_names=["input"], output_names=["logits"],
                              opset_version=17, dynamo=False,
                              dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def reference_grad(path, model, x, y):
    """float64 autograd of the exported graph (onnx2torch), else of the model."""
    try:
        import onnx
        from onnx2torch import convert

        graph = convert(onnx.load(path)).double().eval()
        source = "exported graph"
    except Exception as e:  # noqa: BLE001 - any conversion failure falls back
        graph = model.double().eval()
        source = f"timm model ({type(e).__name__})"
    xg = x.double().clone().requires_grad_(True)
    F.cross_entropy(graph(xg), y, reduction="sum").backward()
    model.float()
    return xg.grad.numpy(), source


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upat-audit", default="target/debug/upat-audit")
    parser.add_argument("archs", nargs="*")
    args = parser.parse_args()
    import timm

    results = {False: [], True: []}
    for arch in args.archs or ARCHS:
        torch.manual_seed(0)
        try:
            model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
        except Exception as e:  # noqa: BLE001
            print(f"{arch:32} create failed: {e}", flush=True)
            continue
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        x = torch.rand(2, *size)
        y = torch.tensor([1, 7])
        for dynamo in (False, True):
            label = "dynamo" if dynamo else "torchscript"
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.onnx")
                try:
                    export(model, x, path, dynamo)
                except Exception as e:  # noqa: BLE001
                    print(f"{arch:32} {label:11} export failed: {str(e).splitlines()[0][:120]}", flush=True)
                    continue
                grad_path = os.path.join(tmp, "grad.onnx")
                built = subprocess.run(
                    [args.upat_audit, "grad", path, "--loss", "ce", "-o", grad_path,
                     "--image-shape", ",".join(map(str, size))],
                    capture_output=True, text=True)
                if built.returncode != 0:
                    why = built.stderr.strip().splitlines()[-1][:160]
                    print(f"{arch:32} {label:11} BLOCKED {why}", flush=True)
                    results[dynamo].append((arch, None, why))
                    continue
                session = ort.InferenceSession(grad_path, providers=["CPUExecutionProvider"])
                outputs = [o.name for o in session.get_outputs()]
                got = session.run(None, {"input": x.numpy(), "labels": y.numpy()})
                grad = got[outputs.index("input_grad")]
                expected, source = reference_grad(path, model, x, y)
                error = float(np.linalg.norm(grad - expected) / max(np.linalg.norm(expected), 1e-30))
                verdict = "ok" if error <= THRESHOLD else "DIFFERS"
                print(f"{arch:32} {label:11} {verdict:8} relative error {error:.2e} vs {source}", flush=True)
                results[dynamo].append((arch, error, source))
    for dynamo, rows in results.items():
        label = "dynamo" if dynamo else "torchscript"
        passed = sum(1 for _, e, _ in rows if e is not None and e <= THRESHOLD)
        print(f"{label}: {passed} of {len(rows)} exports pass (relative error <= {THRESHOLD})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
