"""Checks shared by the file-reading datasets: the split name and which expected files are missing."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "test")


def check_split(dataset: str, split, valid=SPLITS) -> str:
    if split not in valid:
        raise ValueError(f"{dataset}: split must be one of {', '.join(map(repr, valid))}, got {split!r}")
    return split


def check_labels(dataset: str, path, labels, classes: int = 10):
    """``labels`` as int64, after checking they are integers in 0..classes-1 (a float label was truncated, one out
    of range trained a model that indexes past its logits): a ``ValueError`` naming the file."""
    import numpy as np

    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{dataset}: {path}: labels must be integers 0..{classes - 1}, got {labels.dtype} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{dataset}: {path}: labels must lie in 0..{classes - 1}, found {labels.min()} to "
                         f"{labels.max()}: a damaged or foreign file")
    return labels.astype(np.int64)


def missing_files_error(dataset: str, directories: list[Path], missing: list[str], how: str) -> FileNotFoundError:
    where = " or ".join(str(directory) for directory in directories)
    return FileNotFoundError(f"{dataset}: missing {', '.join(missing)} in {where}; {how}")
