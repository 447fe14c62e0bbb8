"""The ``unidl`` command: train (the README's main job), info, compare; ``python -m unidl`` is the same."""

import re

import pytest

import unidl as ud
from unidl import cli, config
from tests.helpers import run_python


@pytest.fixture(autouse=True)
def keep_default_backend(monkeypatch):
    monkeypatch.setattr(config, "_default_backend", config._default_backend)
    monkeypatch.setattr(config, "_default_device", config._default_device)


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "keras"])
def test_train_defaults_reach_95_percent_on_digits(backend, capsys):
    accuracy = cli.train(cli.build_parser().parse_args(["train", "--backend", backend, "--verbose", "0"]))
    out = capsys.readouterr().out
    assert "model=cnn dataset=digits" in out and f"backend={backend}" in out
    assert accuracy >= 0.95
    assert re.search(r"test accuracy: 0\.9[5-9]\d*|test accuracy: 1\.0", out)


def test_train_two_layer_with_options(capsys):
    cli.main(["train", "--model", "two_layer", "--dataset", "synthetic", "--backend", "tf", "--epochs", "3",
              "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "32", "--seed", "1", "--verbose", "0"])
    out = capsys.readouterr().out
    assert "model=two_layer dataset=synthetic backend=tensorflow" in out and "optimizer=sgd lr=0.05" in out
    assert float(out.split("test accuracy:")[1].split()[0]) > 0.5


def test_bad_dataset_is_explained():
    with pytest.raises(SystemExit, match="unknown --dataset 'imagenet'"):
        cli.main(["train", "--dataset", "imagenet", "--verbose", "0"])


def test_missing_mnist_directory_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        cli.main(["train", "--dataset", f"mnist:{tmp_path}", "--verbose", "0"])


def test_info_lists_backends_versions_devices(capsys):
    cli.main(["info"])
    out = capsys.readouterr().out
    for text in ("torch 2.13", "tensorflow 2.21", "keras 3.15", "devices: cpu", "capabilities:", "torch_export, onnx",
                 "framework's own trainer"):
        assert text in out


def test_python_dash_m_unidl_is_the_same_command():
    result = run_python("import runpy, sys\nsys.argv = ['unidl', 'info']\nrunpy.run_module('unidl', run_name='__main__')")
    assert "torch 2.13" in result.stdout


def test_no_arguments_means_train_on_digits(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "model=cnn dataset=digits" in out and "Epoch 15/15" in out
    assert float(out.split("test accuracy:")[1].split()[0]) >= 0.95
