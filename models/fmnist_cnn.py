"""Trains the small Fashion-MNIST CNN shipped as models/fmnist-cnn.onnx.

A plain (not adversarially trained) PyTorch model exported with PyTorch's
default ONNX exporter, as a user would bring one. It also records PyTorch's
own predictions on the first 1000 test images, which the tests compare
upat-audit against on both backends.

Run from the repository root with the project venv:
    .venv/bin/python models/fmnist_cnn.py [--data /usr/share/datasets/fashion-mnist]
"""

import argparse
import json
import os

import numpy as np
import torch
from idx_files import read_idx

HERE = os.path.dirname(os.path.abspath(__file__))


def load(data_dir, prefix):
    x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz")).astype(np.float32) / 255.0
    y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


class FmnistCnn(torch.nn.Module):
    """Input [N,1,28,28] in [0,1]; normalisation is inside the model."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        )
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )

    def forward(self, x):
        return self.classifier(self.features((x - 0.2860) / 0.3530))


def pgd_linf(model, x, y, eps=0.1, alpha=0.025, steps=5):
    """Training-time PGD: the adversarial examples of Madry et al.'s adversarial training."""
    was_training = model.training
    model.eval()
    adv = (x + eps * (2 * torch.rand_like(x) - 1)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(model(adv), y), adv)
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    model.train(was_training)
    return adv.detach()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--adversarial", action="store_true",
                        help="PGD adversarial training (Madry et al.): l-inf eps 0.1, 5 steps of 0.025, random start")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    x_train, y_train = load(args.data, "train")
    x_test, y_test = load(args.data, "t10k")
    model = FmnistCnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x_train))
        model.train()
        for i in range(0, len(perm), 128):
            idx = perm[i : i + 128]
            inputs = pgd_linf(model, x_train[idx], y_train[idx]) if args.adversarial else x_train[idx]
            loss = torch.nn.functional.cross_entropy(model(inputs), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: last batch loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        predictions = model(x_test[:1000]).argmax(dim=1)
    correct = int((predictions == y_test[:1000]).sum())
    print(f"PyTorch clean accuracy on the first 1000 test images: {correct / 1000:.3f}")
    name = "fmnist-cnn-at" if args.adversarial else "fmnist-cnn"
    onnx_path = os.path.join(HERE, f"{name}.onnx")
    torch.onnx.export(
        model,
        (x_test[:2],),
        onnx_path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("N", min=1)}},
        opset_version=17,
        external_data=False,
    )
    with open(os.path.join(HERE, f"{name}.expected.json"), "w") as f:
        json.dump(
            {
                "samples": 1000,
                "correct": correct,
                "clean_acc": correct / 1000,
                "torch": torch.__version__,
                "predictions": predictions.tolist(),
            },
            f,
        )
        f.write("\n")


if __name__ == "__main__":
    main()
