"""The lecture's two-layer net on random data, on the backend named by UNIDL_BACKEND (default: first installed).

    UNIDL_BACKEND=tensorflow python examples/two_layer_net.py
"""

import numpy as np

import unidl as ud

N, D_in, H, D_out = 64, 1000, 100, 10
STEPS = 500


def main(steps: int = STEPS) -> float:
    ud.manual_seed(0)
    data = np.random.default_rng(0)
    x = data.standard_normal((N, D_in)).astype(np.float32)
    y = data.standard_normal((N, D_out)).astype(np.float32)

    model = ud.models.TwoLayerNet(D_in, H, D_out)
    step = ud.train_step(model, ud.nn.MSELoss(), ud.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
    print(f"backend={ud.get_backend()} device={ud.get_device()}")
    for t in range(steps):
        loss = step(x, y)
        if t % 50 == 0 or t == steps - 1:
            print(f"step {t:4d}  loss {float(loss):.6f}")
    return float(loss)


if __name__ == "__main__":
    import os

    main(int(os.environ.get("STEPS", STEPS)))
