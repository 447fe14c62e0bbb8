"""Keras's "Simple MNIST convnet" example, ported call for call: the 8x8 digits that ship with scikit-learn
stand in for MNIST, and ``ud.fit`` takes Keras's ``compile``/``fit`` options on every backend.

    UNIDL_BACKEND=torch python examples/keras_style.py        # EPOCHS=1 SAMPLES=256 for a quick run

Keras's original: keras.io/examples/vision/mnist_convnet. Its ``Sequential`` of ``Conv2D``/``MaxPooling2D``
becomes the same stack of ``ud.nn`` layers (PyTorch's names, channels first); its ``model.compile(loss=...,
optimizer=..., metrics=...)`` options go to ``ud.fit`` directly. The model outputs logits, so the loss is
Keras's sparse categorical cross-entropy of logits (``from_logits=True`` in Keras terms).
"""

import os
import tempfile

import unidl as ud

num_classes = 10
input_shape = (1, 8, 8)  # channels first: (channels, height, width)


def build_model() -> ud.nn.Module:
    # 8x8 images are smaller than MNIST's 28x28: 'same' padding keeps two conv/pool stages possible
    return ud.nn.Sequential(
        ud.nn.Conv2d(1, 32, kernel_size=3, padding=1), ud.nn.ReLU(),
        ud.nn.MaxPool2d(2),
        ud.nn.Conv2d(32, 64, kernel_size=3, padding=1), ud.nn.ReLU(),
        ud.nn.MaxPool2d(2),
        ud.nn.Flatten(),
        ud.nn.Dropout(0.5),
        ud.nn.Linear(64 * 2 * 2, num_classes),
    )


def main(epochs: int = 15, output_dir: str | None = None, samples: int | None = None) -> list:
    """Train for ``epochs`` epochs (on the first ``samples`` training images only, for a quick run), writing
    the best weights, the CSV log and TensorBoard events to ``output_dir`` (default: a new temporary one)."""
    ud.manual_seed(0)
    output_dir = output_dir or tempfile.mkdtemp(prefix="keras_style_")
    # the data, split between train and test sets (images scaled to [0, 1], integer labels)
    (x_train, y_train), (x_test, y_test) = ud.datasets.digits("train"), ud.datasets.digits("test")
    x_train, y_train = x_train[:samples], y_train[:samples]
    print(f"backend={ud.get_backend()} x_train shape: {x_train.shape}, {len(x_train)} train samples, "
          f"{len(x_test)} test samples")

    model = build_model()
    print(ud.summary(model, input_shape=input_shape))

    batch_size = 128
    callbacks = [
        ud.callbacks.ModelCheckpoint(os.path.join(output_dir, "best.weights"), monitor="val_loss", save_best_only=True),
        ud.callbacks.CSVLogger(os.path.join(output_dir, "training.csv")),
        ud.callbacks.TensorBoard(os.path.join(output_dir, "logs")),
    ]
    history = ud.fit(model, x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1,
                     loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"],
                     callbacks=callbacks, verbose=int(os.environ.get("VERBOSE", 2)))

    score = ud.evaluate(model, x_test, y_test, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                        return_dict=False)
    print("Test loss:", score[0])
    print("Test accuracy:", score[1])
    print(f"epochs trained: {len(history.history['loss'])}; logs in {output_dir}")
    return score


if __name__ == "__main__":
    main(int(os.environ.get("EPOCHS", 15)), os.environ.get("OUTPUT_DIR"),
         int(os.environ["SAMPLES"]) if "SAMPLES" in os.environ else None)
