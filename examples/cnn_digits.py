"""The lecture's CNN on the real 8x8 handwritten digits that ship with scikit-learn, through ``ud.fit``.

    UNIDL_BACKEND=keras python examples/cnn_digits.py
"""

import os

import unidl as ud


def main(epochs: int = 15) -> float:
    ud.manual_seed(0)
    (x, y), (x_test, y_test) = ud.datasets.digits("train"), ud.datasets.digits("test")
    model = ud.models.CNN(in_channels=1, num_classes=10, image_size=8)
    optimizer = ud.optim.Adam(model.parameters(), lr=3e-3)
    loader = ud.data.DataLoader(ud.data.TensorDataset(x, y), batch_size=64, shuffle=True, seed=0)
    print(f"backend={ud.get_backend()} device={ud.get_device()}")
    ud.fit(model, loader, loss=ud.nn.CrossEntropyLoss(), optimizer=optimizer, epochs=epochs,
           validation_data=(x_test, y_test), verbose=2)
    accuracy = ud.evaluate(model, (x_test, y_test))["accuracy"]
    print(f"test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main(int(os.environ.get("EPOCHS", 15)))
