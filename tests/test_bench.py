"""``unidl bench --quick`` runs every comparison (the harness in ``benchmarks/``) and writes a report
with a row and a ratio for each.

No timing is asserted: the quick configuration is a few steps on a shared machine. Nearly all of the quick
report's time is the frameworks tracing and compiling each comparison's two steps, which is what it checks;
the timed steps are cut to the fewest that still give two blocks (``--steps 2``).
"""

import importlib.util
import re

import pytest

from benchmarks import harness, keras_peer
from unidl import cli
from unidl import errors as ud_errors

pytest.importorskip("torch")
pytest.importorskip("tensorflow")
pytest.importorskip("keras")
pytestmark = pytest.mark.heavy  # tens of seconds: run first (tests/conftest.py)

ROWS = [
    ("train step, torch", "two_layer"), ("train step, torch", "cnn"),
    ("train step, tensorflow", "two_layer"), ("train step, tensorflow", "cnn"),
    ("train step, tensorflow XLA", "two_layer"), ("train step, tensorflow XLA", "cnn"),
    ("train step, keras", "two_layer"), ("train step, keras", "cnn"),
    ("fit per step, keras", "two_layer"), ("fit per step, keras", "cnn"),
    ("peer: keras on torch", "two_layer"), ("peer: keras on torch", "cnn"),
    ("peer: keras on tensorflow", "two_layer"), ("peer: keras on tensorflow", "cnn"),
    ("data loader epoch, torch", "-"), ("data loader epoch, tensorflow", "-"),
] + ([("train step, jax", "two_layer"), ("train step, jax", "cnn")] if importlib.util.find_spec("jax") else [])
SUBPROCESS_ROWS = {"peer: keras on torch", "peer: keras on jax", "time to first step"}


def table_rows(text):
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 12 and cells[0] not in ("comparison", "---"):
            rows.append(cells)
    return rows


def test_quick_report_has_every_comparison_and_ratio(tmp_path, capsys):
    out = tmp_path / "R.md"
    assert cli.main(["bench", "--quick", "--steps", "2", "--no-subprocess", "--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("- machine:", "- versions:", "python", "numpy", "torch", "tensorflow", "keras", "- date:", "- device: cpu"):
        assert heading in text
    rows = table_rows(text)
    for comparison, model in ROWS:
        matching = [r for r in rows if r[0].startswith(comparison) and r[1] == model]
        assert matching, f"no row for {comparison} / {model}"
    measured = [r for r in rows if not r[-1].startswith("skipped")]
    assert len(measured) >= len(ROWS)
    for row in measured:
        assert float(row[4]) > 0 and float(row[5]) > 0, row  # both sides ran: unidl ms, native ms
        assert re.fullmatch(r"\d+\.\d\d", row[6]), row  # the ratio unidl/native
        low, high = re.fullmatch(r"(\d+\.\d\d)-(\d+\.\d\d)", row[7]).groups()  # its block quartiles
        assert float(low) <= float(high), row
        assert row[9] in ("yes", "**no**", "-") and (row[8] == "-") == (row[9] == "-"), row  # target and met
        # every train step but Keras's own graph starts both sides from the same weights: their first losses
        # agree (a weight converted to the native layout wrongly moves the loss by about 1e-1)
        assert (row[10] != "-") == (row[0].startswith("train step") and "in tf.function" not in row[3]), row
        assert row[10] == "-" or float(row[10]) < 1e-4, row
    skipped = [r for r in rows if r[-1].startswith("skipped")]
    assert {r[0] for r in skipped} <= SUBPROCESS_ROWS
    assert ("| comparison | model | unidl | native | unidl ms | native ms | unidl/native | block quartiles | target "
            "| met | loss diff | note |") in text
    met, with_target = re.search(r"Targets met: (\d+) of (\d+)", text).groups()
    assert (int(met), int(with_target)) == (sum(r[9] == "yes" for r in rows), sum(r[9] != "-" for r in rows))


def test_keras_on_torch_peer_runs_in_its_own_process():
    settings = harness.Settings.quick(2)
    rows = keras_peer.keras_peer(settings, "cpu", "torch", "torch")
    assert {(r.comparison, r.model) for r in rows} >= {("peer: keras on torch", "two_layer"),
                                                      ("peer: keras on torch", "cnn")}
    for row in rows:
        assert row.ratio is not None and row.ratio > 0
    two_layer_step = [r for r in rows if r.model == "two_layer" and "train_on_batch" in r.native][0]
    assert two_layer_step.target  # the 3x target applies to the two-layer net


def test_block_spread_is_the_quartiles_of_block_ratios():
    # blocks of 2 steps: ratios 1.0, 2.0, 3.0, 4.0 (a's block median over b's)
    a = [1, 1, 2, 2, 3, 3, 4, 4]
    b = [1] * 8
    low, high = harness._block_spread(a, b, 2)
    assert (low, high) == (1.75, 3.25)
    assert harness._block_spread([1.0], [1.0], 1) is None


def test_time_to_first_step_runs_in_fresh_processes():
    from benchmarks import first_step

    unidl_seconds, native_seconds = first_step._fresh("unidl", "torch"), first_step._fresh("native", "torch")
    assert 0 < unidl_seconds < 60 and 0 < native_seconds < 60


def test_keep_going_reports_a_failed_group_as_a_row_and_runs_the_next(monkeypatch):
    """``--keep-going`` (a GPU lent for one call): a group that raises is a row naming its error and the groups
    after it still run; without it the error propagates."""
    from benchmarks import bench

    def broken(*args):
        raise RuntimeError("index is on cpu, different from other tensors on cuda:0")

    monkeypatch.setattr(bench, "bench_torch", broken)
    monkeypatch.setattr(bench, "keras_peer", lambda *args: [harness.Row("peer: keras on torch", "cnn", "a", "b", 1, 2)])
    settings = harness.Settings.quick(2)
    rows = bench.run(settings, only="torch", log=lambda *a: None, keep_going=True, quick=True)
    failed = [r for r in rows if r.note.startswith("failed:")]
    assert [(r.comparison, r.note) for r in failed] == [
        ("torch", "failed: RuntimeError: index is on cpu, different from other tensors on cuda:0")]
    assert any(r.comparison == "peer: keras on torch" and r.ratio for r in rows)  # the group after it ran
    with pytest.raises(RuntimeError, match="index is on cpu"):
        bench.run(settings, only="torch", log=lambda *a: None, quick=True)


def test_an_only_that_matches_no_group_or_a_missing_findings_file_is_refused_before_anything_runs(
        tmp_path, capsys, monkeypatch):
    """``--only torhc`` ran nothing, exited 0 and wrote an empty report over the old one; a ``--findings`` path
    that cannot be read was opened after the whole benchmark had run, losing it. Both are one-line errors, status 2,
    before any group runs and with nothing written; a group name this run lacks (JAX not installed) is one too."""
    from benchmarks import bench

    monkeypatch.setattr(bench, "run", lambda *args, **kwargs: pytest.fail("the benchmark ran"))
    out = tmp_path / "R.md"
    for arguments, message in [
            (["--only", "torhc"], "argument --only: 'torhc' matches no group; groups: torch, tensorflow, keras, jax"),
            (["--findings", str(tmp_path / "nope.md")], f"argument --findings: cannot read '{tmp_path / 'nope.md'}'"),
            (["--out", str(tmp_path)], f"argument --out: '{tmp_path}' is a directory")]:
        with pytest.raises(SystemExit) as exited:
            cli.main(["bench", "--quick", "--out", str(out), *arguments])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"unidl bench: error: {message}") and len(err.splitlines()) == 1, err
        assert not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(bench, "_installed", lambda backend: backend != "jax")
    with pytest.raises(ud_errors.ConfigurationError, match="--only 'jax': no group of this run matches it"):
        bench.run(harness.Settings.quick(2), only="jax", log=lambda *a: None, quick=True)
