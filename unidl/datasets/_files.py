"""Checks shared by the file-reading datasets: the split name and which expected files are missing."""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "test")


def check_split(dataset: str, split, valid=SPLITS) -> str:
    if split not in valid:
        raise ValueError(f"{dataset}: split must be one of {', '.join(map(repr, valid))}, got {split!r}")
    return split


def missing_files_error(dataset: str, directories: list[Path], missing: list[str], how: str) -> FileNotFoundError:
    where = " or ".join(str(directory) for directory in directories)
    return FileNotFoundError(f"{dataset}: missing {', '.join(missing)} in {where}; {how}")
