"""Reads the IDX files of Debian's dataset-fashion-mnist (gzip-compressed),
for the model generator scripts beside this file."""

import gzip
import os

import numpy as np

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist(name):
    """`name` (e.g. `t10k-images-idx3-ubyte.gz`) from the system dataset."""
    return read_idx(os.path.join(FASHION_MNIST, name))
