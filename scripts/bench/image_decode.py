"""Decoding and preprocessing speed: `upat-audit prepare` against
torchvision's ImageFolder + DataLoader on the same JPEGs, same machine, same
run; also checks the two give equal tensors.

Usage: .venv/bin/python scripts/bench/image_decode.py BIN [--images N] [--workers W]
  BIN: an upat-audit binary (a release build: cargo build --release)
Writes N ImageNet-sized JPEGs (500x375 and 375x500, quality 90) into a
temporary folder, then times res256-crop224 both ways (best of 3), each
decoding the folder and writing the tensors to an .npz.
"""

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms


def write_images(root: Path, count: int):
    rng = np.random.default_rng(1)
    for i in range(count):
        d = root / f"class{i % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = (375, 500) if i % 3 else (500, 375)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / 7) + np.cos(yy / 5), np.sin((xx + yy) / 9), np.cos(xx / 3 - yy / 11)], -1)
        pixels = (base - base.min()) / (base.max() - base.min()) * 200 + rng.integers(0, 56, (h, w, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(d / f"{i:05d}.JPEG", quality=90)


def best_of(runs, f):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        write_images(root, args.images)
        out = Path(tmp) / "prepared.npz"

        def upat():
            subprocess.run(
                [args.bin, "prepare", "--data", f"imagefolder:{root}", "--transform", "res256-crop224", "--out", str(out)],
                check=True,
                capture_output=True,
            )
            return np.load(out)["x"]

        def torchvision():
            tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
            loader = torch.utils.data.DataLoader(
                datasets.ImageFolder(root, transform=tf), batch_size=50, num_workers=args.workers
            )
            x = torch.cat([x for x, _ in loader]).numpy()
            np.savez(Path(tmp) / "torchvision.npz", x=x)  # the same job: decode, then write
            return x

        t_upat, x_upat = best_of(3, upat)
        t_tv, x_tv = best_of(3, torchvision)
        equal = bool((x_upat == x_tv).all())
        print(f"{args.images} JPEGs, res256-crop224, {torch.get_num_threads()} torch threads")
        print(f"upat-audit prepare: {t_upat:.2f} s ({args.images / t_upat:.0f} images/s)")
        print(f"torchvision DataLoader (num_workers={args.workers}) + np.savez: {t_tv:.2f} s ({args.images / t_tv:.0f} images/s)")
        print(f"time ratio upat / torchvision: {t_upat / t_tv:.2f}; tensors equal: {equal}")


if __name__ == "__main__":
    main()
