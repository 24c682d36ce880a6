"""A Keras CNN for Fashion-MNIST, converted to ONNX with tf2onnx: a
channels-last model ([N, 28, 28, 1]) as TensorFlow users bring them.

TensorFlow is too large for the project venv, so this runs in a venv of its
own; the ONNX file and its expected predictions are checked in:

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu tf2onnx onnxruntime==1.31.1
    /tmp/tfvenv/bin/python models/keras_fmnist.py

Writes models/fmnist-keras-nhwc.onnx and models/fmnist-keras-nhwc.expected.json
(ONNX Runtime's predictions in Python on the first 1000 test images, which
the tests require upat to reproduce). Reads Debian's dataset-fashion-mnist.
"""

import json
import os

import numpy as np
from idx_files import fashion_mnist as idx

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = 1000


def main():
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    x_train = idx("train-images-idx3-ubyte.gz")[:20000, :, :, None].astype(np.float32) / 255
    y_train = idx("train-labels-idx1-ubyte.gz")[:20000].astype(np.int64)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1), name="image"),
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(64, activation="relu"),
        tf.keras.layers.Dense(10, name="logits"),
    ])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=2, batch_size=128, verbose=2)

    path = os.path.join(HERE, "fmnist-keras-nhwc.onnx")
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="image"),)
    # Keras 3 models go through a tf.function (tf2onnx's from_keras expects Keras 2).
    forward = tf.function(lambda image: {"logits": model(image)})
    tf2onnx.convert.from_function(forward, input_signature=spec, opset=17, output_path=path)

    import onnxruntime as ort

    x_test = idx("t10k-images-idx3-ubyte.gz")[:SAMPLES, :, :, None].astype(np.float32) / 255
    y_test = idx("t10k-labels-idx1-ubyte.gz")[:SAMPLES].astype(np.int64)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x_test})[0]
    predictions = logits.argmax(1)
    correct = int((predictions == y_test).sum())
    with open(os.path.join(HERE, "fmnist-keras-nhwc.expected.json"), "w") as f:
        json.dump({"samples": SAMPLES, "correct": correct, "clean_acc": correct / SAMPLES,
                   "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
                   "onnxruntime": ort.__version__, "predictions": predictions.tolist()}, f)
    print(f"clean accuracy (ONNX Runtime, Python): {correct / SAMPLES:.3f}")


if __name__ == "__main__":
    main()
