"""Datasets: digits' fixed split, MNIST IDX and CIFAR-10 pickle readers (incl. malicious pickles), synthetic."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from unidl import datasets
from unidl.data import DataLoader, TensorDataset

# ---- digits ------------------------------------------------------------------


def test_digits_shapes_dtypes_and_split():
    pytest.importorskip("sklearn")
    x_train, y_train = datasets.digits("train")
    x_test, y_test = datasets.digits("test")
    x_all, y_all = datasets.digits(None)
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8) and x_all.shape == (1797, 1, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_all.min() and x_all.max() == 1.0
    assert set(np.unique(y_all)) == set(range(10))
    assert datasets.digits("train", flatten=True)[0].shape == (1437, 64)

    # The split is a partition of the whole: match rows of (image, label) exactly.
    def rows(x, y):
        return {x[i].tobytes() + y[i].tobytes() for i in range(len(y))}

    train_rows, test_rows = rows(x_train, y_train), rows(x_test, y_test)
    assert not train_rows & test_rows
    assert train_rows | test_rows == rows(x_all, y_all)
    np.testing.assert_array_equal(datasets.digits("test")[1], y_test)  # fixed, not re-drawn


def test_digits_are_load_digits_own_without_importing_sklearn_datasets():
    """``digits`` reads the file scikit-learn ships instead of importing ``sklearn.datasets`` (SciPy and most of
    scikit-learn: 0.7 s of CPU in every fresh interpreter that trains on digits), and gives ``load_digits``'s data
    exactly: the same images and labels in the same order, so the fixed split is unchanged."""
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    from tests.helpers import run_python

    bunch = load_digits()
    x_all, y_all = datasets.digits(None)
    np.testing.assert_array_equal(x_all[:, 0], (bunch.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y_all, bunch.target)
    code = ("import sys\nfrom unidl import datasets\nx, y = datasets.digits('train')\n"
            "print(x.shape, sorted(name for name in sys.modules if name.startswith(('sklearn', 'scipy'))))")
    assert run_python(code).stdout.split("\n")[0] == "(1437, 1, 8, 8) []"


def test_digits_bad_split():
    with pytest.raises(ValueError, match="split"):
        datasets.digits("validation")


# ---- MNIST -------------------------------------------------------------------

MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def idx_bytes(array):
    array = np.asarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(directory, split, n, compress=False, rng=None):
    rng = rng or np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    for name, array in zip(MNIST_NAMES[split], (images, labels)):
        data = idx_bytes(array)
        if compress:
            with gzip.open(directory / f"{name}.gz", "wb") as file:
                file.write(data)
        else:
            (directory / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_reads_idx_files(tmp_path, split, compress):
    images, labels = write_mnist(tmp_path, split, 5, compress)
    x, y = datasets.mnist(tmp_path, split)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(x[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, labels)


def test_mnist_truncated_file_names_file_and_sizes(tmp_path):
    write_mnist(tmp_path, "train", 4)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    expected = 16 + 4 * 28 * 28
    message = rf"train-images-idx3-ubyte is truncated.*needs {expected} bytes, found {expected - 100}"
    with pytest.raises(ValueError, match=message):
        datasets.mnist(tmp_path, "train")


def test_mnist_truncated_gzip(tmp_path):
    write_mnist(tmp_path, "train", 4, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz"):
        datasets.mnist(tmp_path, "train")


def test_mnist_bad_magic(tmp_path):
    write_mnist(tmp_path, "test", 3)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match="magic number"):
        datasets.mnist(tmp_path, "test")


def test_mnist_label_count_mismatch(tmp_path):
    write_mnist(tmp_path, "test", 3)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2)))
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        datasets.mnist(tmp_path, "test")


def test_mnist_and_cifar10_labels_outside_0_to_9_name_the_file(tmp_path):
    """A label of 200 (MNIST) or 50, 1.7 or a string (CIFAR-10) is a ``ValueError`` naming the file (the float was
    truncated, the others trained a model indexing past its logits)."""
    write_mnist(tmp_path, "test", 2)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes([3, 200]))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte: labels must lie in 0..9, found 3 to 200"):
        datasets.mnist(tmp_path, "test")
    for labels, message in (([1, 50], "labels must lie in 0..9, found 1 to 50"),
                            ([1.7, -3], "labels must be integers 0..9, got float64 labels"),
                            (["a", "b"], "labels must be integers 0..9, got <U1 labels")):
        with open(tmp_path / "test_batch", "wb") as file:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, file)
        with pytest.raises(ValueError, match=f"test_batch: {message}"):
            datasets.cifar10(tmp_path, "test")


def test_mnist_missing_files_are_listed(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        datasets.mnist(tmp_path / "nowhere", "train")
    message = str(error.value)
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert str(tmp_path / "nowhere") in message

    write_mnist(tmp_path, "test", 2)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing t10k-images-idx3-ubyte \(or t10k-images-idx3-ubyte.gz\) in"):
        datasets.mnist(tmp_path, "test")


# ---- CIFAR-10 ----------------------------------------------------------------


def write_cifar(directory, names, n=3, protocol=pickle.HIGHEST_PROTOCOL, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for name in names:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, n)]
        with open(directory / name, "wb") as file:
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels}, file, protocol=protocol)
        written.append((data, labels))
    return written


TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_reads_pickled_batches(tmp_path, protocol):
    written = write_cifar(tmp_path, TRAIN_BATCHES, protocol=protocol)
    x, y = datasets.cifar10(tmp_path, "train")
    assert x.shape == (15, 3, 32, 32) and x.dtype == np.float32 and y.dtype == np.int64
    data = np.concatenate([d for d, _ in written])
    np.testing.assert_allclose(x, data.reshape(15, 3, 32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, [label for _, labels in written for label in labels])


def test_cifar10_finds_the_extracted_subdirectory(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py", ["test_batch"], n=4)
    x, y = datasets.cifar10(tmp_path, "test")
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_cifar10_missing_files_are_listed(tmp_path):
    write_cifar(tmp_path, TRAIN_BATCHES[:3])
    with pytest.raises(FileNotFoundError, match="missing data_batch_4, data_batch_5 in"):
        datasets.cifar10(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="test_batch"):
        datasets.cifar10(tmp_path / "nowhere", "test")


def test_cifar10_truncated_file(tmp_path):
    write_cifar(tmp_path, ["test_batch"])
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:-500])
    with pytest.raises(ValueError, match="test_batch is truncated or corrupt"):
        datasets.cifar10(tmp_path, "test")


def test_cifar10_wrong_shape(tmp_path):
    with open(tmp_path / "test_batch", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, file)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        datasets.cifar10(tmp_path, "test")


class WritesMarker:
    """Unpickling this calls open(path, 'w'): a stand-in for any code execution."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


class RunsShell:
    def __reduce__(self):
        import os
        return (os.system, ("true",))


@pytest.mark.parametrize("payload", ["marker", "shell", "nested"])
def test_cifar10_rejects_malicious_pickles(tmp_path, payload):
    marker = tmp_path / "marker.txt"
    evil = {"marker": WritesMarker(marker), "shell": RunsShell()}.get(payload)
    labels = [0, 1] if payload != "nested" else [0, WritesMarker(marker)]
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": labels, b"evil": evil}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    refused = r"refusing to load global ((io|builtins)\.open|\w+\.system)"
    with pytest.raises(pickle.UnpicklingError, match=refused):
        datasets.cifar10(tmp_path, "test")
    assert not marker.exists()


# ---- synthetic and end to end ------------------------------------------------


def test_synthetic_is_deterministic_and_learnable():
    x, y = datasets.synthetic(n=600, num_classes=4, image_size=6, channels=2, seed=3)
    assert x.shape == (600, 2, 6, 6) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, datasets.synthetic(n=600, num_classes=4, image_size=6, channels=2, seed=3)[0])
    assert set(np.unique(y)) == set(range(4))
    # Nearest class mean (estimated on the first half) classifies the second half well.
    flat = x.reshape(600, -1)
    means = np.stack([flat[:300][y[:300] == c].mean(0) for c in range(4)])
    predicted = np.argmin(((flat[300:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y[300:]).mean() > 0.9


@pytest.mark.parametrize("seed", [None, -1, 1.5, "a", True])
def test_synthetic_takes_a_seed_of_its_own(seed):
    """The same images for the same arguments: a seed that is not a non-negative integer is a ``ValueError`` (None
    drew other images at each call; the others gave NumPy's errors)."""
    with pytest.raises(ValueError, match="synthetic: seed must be a non-negative integer"):
        datasets.synthetic(5, seed=seed)


def test_synthetic_feeds_a_loader():
    x, y = datasets.synthetic(n=50)
    assert sum(len(batch[1]) for batch in DataLoader(TensorDataset(x, y), batch_size=16)) == 50
