"""Image collections and what torchvision makes of them, for the image
loader's tests (tests/integration/images.rs).

Writes OUT/folder, an ImageFolder (classes `ant`, `bee`, `cat`; a nested
subfolder; every JPEG and PNG flavour Pillow writes: 4:2:0, 4:2:2 and
4:4:4 subsampling, progressive, grey and CMYK JPEGs; RGB, RGBA, grey,
grey+alpha, palette with transparency, 16-bit RGB, 1/2/4-bit grey and
interlaced PNGs; sizes that exercise the crop's rounding and padding),
OUT/list.csv naming some of its files, and for each transform in CASES
OUT/<name>.npz with `x` (torchvision's tensors, float32 NCHW) and `y`, as
torchvision.datasets.ImageFolder with that transform gives them, and
OUT/cases.tsv: each case's name and upat's --transform for it.

Usage: python scripts/goldens/images.py OUT
"""

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

# name -> (upat --transform, torchvision transform)
CASES = {
    "res40-crop32": (
        "resize=40,crop=32",
        transforms.Compose([transforms.Resize(40), transforms.CenterCrop(32), transforms.ToTensor()]),
    ),
    "bicubic-res40-crop32": (
        "resize=40,crop=32,interpolation=bicubic",
        transforms.Compose(
            [
                transforms.Resize(40, interpolation=InterpolationMode.BICUBIC),
                transforms.CenterCrop(32),
                transforms.ToTensor(),
            ]
        ),
    ),
    "nearest-24x30": (
        "resize=24x30,interpolation=nearest",
        transforms.Compose(
            [transforms.Resize([24, 30], interpolation=InterpolationMode.NEAREST), transforms.ToTensor()]
        ),
    ),
    "crop72": ("crop=72", transforms.Compose([transforms.CenterCrop(72), transforms.ToTensor()])),
    "grey-res33-crop31x29": (
        "resize=33,crop=31x29,channels=1",
        transforms.Compose(
            [
                transforms.Grayscale(1),
                transforms.Resize(33),
                transforms.CenterCrop((31, 29)),
                transforms.ToTensor(),
            ]
        ),
    ),
    "res256-crop224": (
        "res256-crop224",
        transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]),
    ),
}


def picture(rng, height, width):
    """Smooth structure plus noise: something JPEG and resampling both notice."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [np.sin(xx / 7) + np.cos(yy / 5), np.sin((xx + yy) / 9), np.cos(xx / 3 - yy / 11)], -1
    )
    base = (base - base.min()) / (base.max() - base.min() + 1e-9)
    return (base * 200 + rng.integers(0, 56, (height, width, 3))).astype(np.uint8)


def write_folder(root: Path):
    rng = np.random.default_rng(7)
    ant, bee, cat = root / "ant", root / "bee", root / "cat"
    for d in (ant, bee, cat, bee / "nested"):
        d.mkdir(parents=True, exist_ok=True)
    rgb = lambda h, w: Image.fromarray(picture(rng, h, w))
    rgb(61, 83).save(ant / "a420.jpg", quality=90)
    rgb(75, 64).save(ant / "b444.jpg", quality=92, subsampling=0)
    rgb(50, 97).save(ant / "c422.JPEG", quality=80, subsampling=1)
    rgb(90, 71).save(ant / "d_progressive.jpg", quality=85, progressive=True)
    rgb(64, 64).convert("L").save(ant / "e_grey.jpg", quality=90)
    rgb(59, 77).convert("CMYK").save(ant / "f_cmyk.jpg", quality=95)
    rgb(375, 500).save(ant / "g_large.jpg", quality=88)
    rgb(45, 52).save(bee / "a_rgb.png")
    rgba = np.dstack([picture(rng, 47, 53), rng.integers(0, 256, (47, 53), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(bee / "b_rgba.png")
    Image.fromarray(picture(rng, 66, 40)[:, :, 0], "L").save(bee / "c_grey.png")
    la = np.dstack([picture(rng, 38, 44)[:, :, 1], rng.integers(0, 256, (38, 44), dtype=np.uint8)])
    Image.fromarray(la, "LA").save(bee / "d_grey_alpha.png")
    palette = rgb(57, 61).quantize(colors=37)
    palette.info["transparency"] = 3
    palette.save(bee / "e_palette.png", transparency=3)
    rgb16 = (picture(rng, 42, 50).astype(np.uint16) * 257 + rng.integers(0, 257, (42, 50, 3))).astype(">u2")
    Image.frombytes("RGB", (50, 42), rgb16.tobytes(), "raw", "RGB;16B").save(bee / "f_rgb16.png")
    for bits in (1, 2, 4):
        grey = rng.integers(0, 256, (33, 35), dtype=np.uint8)
        image = Image.fromarray(grey, "L")
        if bits == 1:
            image = image.convert("1")
            image.save(bee / "nested" / f"g_{bits}bit.png")
        else:
            image.save(bee / "nested" / f"g_{bits}bit.png", bits=bits)
    rgb(70, 58).save(bee / "nested" / "h_interlaced.png", interlace=1)
    rgb(100, 30).save(cat / "a_tall.png")
    rgb(30, 100).save(cat / "b_wide.jpg", quality=90)
    rgb(73, 81).save(cat / "c_odd.png")


def main():
    out = Path(sys.argv[1])
    write_folder(out / "folder")
    dataset = datasets.ImageFolder(out / "folder")
    with open(out / "list.csv", "w") as f:
        f.write("path,label\n")
        for path, label in dataset.samples[1::3]:
            f.write(f"folder/{Path(path).relative_to(out / 'folder').as_posix()},{label}\n")
    with open(out / "cases.tsv", "w") as f:
        for name, (spec, _) in CASES.items():
            f.write(f"{name}\t{spec}\n")
    for name, (spec, transform) in CASES.items():
        data = datasets.ImageFolder(out / "folder", transform=transform)
        xs, ys = zip(*(data[i] for i in range(len(data))))
        np.savez(
            out / f"{name}.npz",
            x=torch.stack(xs).numpy().astype(np.float32),
            y=np.array(ys, dtype=np.int64),
        )
    print(f"{len(dataset)} images, {len(CASES)} transforms in {out}")


if __name__ == "__main__":
    main()
