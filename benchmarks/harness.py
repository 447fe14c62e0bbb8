"""What every comparison shares: the settings, a result row, the alternating timer, and the
two models and their batches as unidl builds them (the native side converts these weights)."""

from __future__ import annotations

import dataclasses
import gc
import statistics
import time

import numpy as np

LR, MOMENTUM, BATCH = 1e-2, 0.9, 64
TWO_LAYER = dict(D_in=1000, H=100, D_out=10)
CNN_INPUT = (3, 32, 32)
MODELS = ("two_layer", "cnn")
PARITY_TARGET = 1.05       # unidl/native, every backend and model
SAME_INPUT_NOTE = "information: native transposes the same NCHW batch in its step"
# (model, whether the native model gets unidl's NCHW batch): every model, then the CNN on the same input
LAYOUT_VARIANTS = [(m, False) for m in MODELS] + [("cnn", True)]


@dataclasses.dataclass
class Settings:
    steps: int          # timed steps per side of a per-step comparison
    warmup: int         # untimed steps per side before timing
    blocks: int         # alternations: each side runs steps/blocks steps per block
    fit_steps: int      # batches per epoch in the fit comparisons
    fit_rounds: int     # timed epochs per side in the fit comparisons
    loader_samples: int  # rows of the in-memory arrays for the loader comparisons
    loader_rounds: int  # timed epochs per side in the loader comparisons
    subprocess: bool = True  # run the Keras-on-torch peer (a subprocess)
    model_steps: int = 20   # timed steps per side for the workload models (ResNet-18, transformer)
    model_batch: int = 32   # their batch size

    @classmethod
    def full(cls, steps=None):
        steps = steps or 300
        return cls(steps=steps, warmup=max(5, steps // 10), blocks=max(2, steps // 10), fit_steps=50, fit_rounds=8,
                   loader_samples=10_000, loader_rounds=8)

    @classmethod
    def quick(cls, steps=None):
        steps = steps or 4
        return cls(steps=steps, warmup=1, blocks=2, fit_steps=2, fit_rounds=2, loader_samples=256, loader_rounds=2,
                   model_steps=2, model_batch=2)


@dataclasses.dataclass
class Row:
    comparison: str
    model: str
    unidl: str
    native: str
    unidl_ms: float | None = None
    native_ms: float | None = None
    target: str = ""        # "<= 1.05" style bound on unidl/native, or "" for information only
    note: str = ""
    loss_diff: float | None = None  # |loss of the first step, unidl - native| from the same weights and batch
    spread: tuple | None = None     # quartiles of the per-block ratios (see Timing)

    @property
    def ratio(self) -> float | None:
        if self.unidl_ms is None or self.native_ms is None:
            return None
        return self.unidl_ms / self.native_ms

    @property
    def spread_text(self) -> str | None:
        """The block quartiles as 'low-high', or None when not measured."""
        return f"{self.spread[0]:.2f}-{self.spread[1]:.2f}" if self.spread else None

    @property
    def met(self) -> bool | None:
        if not self.target or self.ratio is None:
            return None
        return self.ratio <= float(self.target.split()[-1]) + 1e-12


class Timing(tuple):
    """``(median seconds of a, median seconds of b)``; ``spread``: the lower and upper quartile of the
    per-block ratios (a's block median / b's), how far the ratio moves within one run."""

    spread: tuple[float, float] | None

    def __new__(cls, a_median: float, b_median: float, spread):
        timing = super().__new__(cls, (a_median, b_median))
        timing.spread = spread
        return timing


def _block_spread(times_a: list, times_b: list, per_block: int) -> tuple[float, float] | None:
    ratios = [statistics.median(times_a[i:i + per_block]) / statistics.median(times_b[i:i + per_block])
              for i in range(0, len(times_a), per_block)]
    if len(ratios) < 2:
        return None
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive")
    return quartiles[0], quartiles[2]


def alternate(a, b, steps: int, warmup: int, blocks: int) -> Timing:
    """Median seconds of ``a()`` and of ``b()``, timed in alternating blocks (A B, B A, A B, ...)."""
    for _ in range(warmup):
        a()
    for _ in range(warmup):
        b()
    per_block = max(1, steps // max(1, blocks))
    times = {a: [], b: []}
    # the warm-up's garbage, young generations only: a full collection walks every object of the imported
    # frameworks (a third of a second a call once TensorFlow, Keras and JAX are loaded), and the timings do not
    # depend on it, since no collection runs while they are taken
    gc.collect(1)
    gc.disable()  # a collection triggered by one side would land in the other's timings
    try:
        for block in range(max(1, blocks)):
            for fn in ((a, b) if block % 2 == 0 else (b, a)):
                record = times[fn]
                for _ in range(per_block):
                    start = time.perf_counter()
                    fn()
                    record.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return Timing(statistics.median(times[a]), statistics.median(times[b]),
                  _block_spread(times[a], times[b], per_block))


def ms(seconds):
    return seconds * 1e3


def train_step_rows(backend: str, native: str, steps_of, settings: Settings, device: str) -> list[Row]:
    """A "train step, <backend>" row for each model: ``steps_of(model, device)``, called under the backend and
    device, gives ``(unidl_step, native_step, loss_diff)`` (zero-argument callables), timed by ``alternate``
    against the parity target; ``native`` labels the hand-written side."""
    import unidl as ud

    rows = []
    for model in MODELS:
        with ud.use_backend(backend), ud.use_device(device):
            unidl_step, native_step, diff = steps_of(model, device)
            a, b = timing = alternate(unidl_step, native_step, settings.steps, settings.warmup, settings.blocks)
        rows.append(Row(f"train step, {backend}", model, "ud.train_step", native, ms(a), ms(b), f"<= {PARITY_TARGET}",
                        loss_diff=diff, spread=timing.spread))
    return rows


def layout_variant(same_input: bool, note: str = "") -> tuple[str, str, str]:
    """``(target, note, suffix of the native label)`` of a row: the parity target, or information only
    when the native CNN gets the same NCHW batch as unidl."""
    if same_input:
        return "", SAME_INPUT_NOTE, ", same NCHW batch"
    return f"<= {PARITY_TARGET}", note, ""


def batch_arrays(model: str, n: int = BATCH, seed: int = 0):
    """NumPy ``(x, y)``: NCHW images and int64 labels for the CNN, D_in features and D_out targets otherwise."""
    rng = np.random.default_rng(seed)
    if model == "cnn":
        return rng.standard_normal((n,) + CNN_INPUT, dtype=np.float32), rng.integers(0, 10, n).astype(np.int64)
    return (rng.standard_normal((n, TWO_LAYER["D_in"]), dtype=np.float32),
            rng.standard_normal((n, TWO_LAYER["D_out"]), dtype=np.float32))


def unidl_model(model: str):
    """``(module, loss, optimizer)`` under the backend in force, seeded so every backend starts alike."""
    import unidl as ud

    ud.manual_seed(0)
    if model == "cnn":
        module, loss = ud.models.CNN(in_channels=3, num_classes=10, image_size=32), ud.nn.CrossEntropyLoss()
    else:
        module, loss = ud.models.TwoLayerNet(**TWO_LAYER), ud.nn.MSELoss()
    return module, loss, ud.optim.SGD(module.parameters(), lr=LR, momentum=MOMENTUM)


def nhwc_fc_weight(weight: np.ndarray, channels: int = 16) -> np.ndarray:
    """The first fully connected weight (out, C*H*W) reordered for an NHWC flatten (out, H*W*C)."""
    out, features = weight.shape
    side = int(round((features // channels) ** 0.5))
    return weight.reshape(out, channels, side, side).transpose(0, 2, 3, 1).reshape(out, features)


def channels_last_weights(state: dict) -> list[np.ndarray]:
    """The CNN's canonical (OIHW, (out, in)) weights as a channels-last framework stores them: HWIO
    kernels, (in, out) dense weights, the first dense layer reordered for an NHWC flatten."""
    arrays = list(state.values())
    converted = []
    for index, array in enumerate(arrays):
        if array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)
        elif array.ndim == 2:
            array = (nhwc_fc_weight(array) if arrays[index - 2].ndim == 4 else array).T
        converted.append(np.ascontiguousarray(array))
    return converted
