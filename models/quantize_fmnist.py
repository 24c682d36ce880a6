"""The Fashion-MNIST CNN quantized to int8 in QDQ form (QuantizeLinear /
DequantizeLinear around each op), as ONNX Runtime's static quantization
writes deployed models.

    .venv/bin/python models/quantize_fmnist.py

Reads models/fmnist-cnn.onnx and Debian's dataset-fashion-mnist; calibrates
on 500 training images (MinMax); writes models/fmnist-cnn-qdq.onnx and
models/fmnist-cnn-qdq.expected.json (ONNX Runtime's predictions in Python on
the first 1000 test images, which the tests require upat to reproduce).
"""

import json
import os

import numpy as np
from idx_files import fashion_mnist as idx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = 1000


class Calibration(CalibrationDataReader):
    def __init__(self, images):
        self.batches = iter([{"input": images[i:i + 50]} for i in range(0, len(images), 50)])

    def get_next(self):
        return next(self.batches, None)


def main():
    source = os.path.join(HERE, "fmnist-cnn.onnx")
    prepared = os.path.join(HERE, "fmnist-cnn-qdq.prepared.onnx")
    path = os.path.join(HERE, "fmnist-cnn-qdq.onnx")
    quant_pre_process(source, prepared)
    train = idx("train-images-idx3-ubyte.gz")[:500, None].astype(np.float32) / 255
    quantize_static(prepared, path, Calibration(train), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    os.remove(prepared)

    x_test = idx("t10k-images-idx3-ubyte.gz")[:SAMPLES, None].astype(np.float32) / 255
    y_test = idx("t10k-labels-idx1-ubyte.gz")[:SAMPLES].astype(np.int64)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    predictions = session.run(None, {"input": x_test})[0].argmax(1)
    correct = int((predictions == y_test).sum())
    with open(os.path.join(HERE, "fmnist-cnn-qdq.expected.json"), "w") as f:
        json.dump({"samples": SAMPLES, "correct": correct, "clean_acc": correct / SAMPLES,
                   "onnxruntime": ort.__version__, "predictions": predictions.tolist()}, f)
    print(f"clean accuracy (ONNX Runtime, Python): {correct / SAMPLES:.3f}")


if __name__ == "__main__":
    main()
