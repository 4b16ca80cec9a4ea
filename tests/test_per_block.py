"""linear.block=all: one linear probe per block, and the curve suites plot."""

import pytest

from mimbench.suites import report
from tests.conftest import evaluated, run_cli


def test_each_block_is_probed_as_a_single_block_probe_would(tmp_path):
    run = tmp_path / "run"
    assert run_cli("pretrain", "--preset", "smoke", "--target", "pixels", "--out", run).returncode == 0
    probe = evaluated("linear", "--checkpoint", run / "checkpoint.pt", "--set", "linear.block=all",
                      out=tmp_path / "all", name="linear_probe")
    assert probe["top1"] == probe["top1_block1"]  # the smoke student's 2 blocks: the last is the headline
    first = evaluated("linear", "--checkpoint", run / "checkpoint.pt", "--set", "linear.block=0",
                      out=tmp_path / "block0", name="linear_probe")
    assert probe["top1_block0"] == first["top1"] and first["card"]["features"] == "avg-pooled block 0"
    refused = run_cli("eval", "linear", "--model", "target:clip", "--preset", "smoke", "--set",
                      "linear.block=all", "--out", tmp_path / "t")
    assert refused.returncode != 0
    assert "linear.block=all probes each block of a student; target:clip has no blocks" in refused.stderr
    assert not (tmp_path / "mimbench-home" / "teachers").exists()  # refused before building the teacher


def test_the_suite_curve_is_each_targets_mean_over_seeds_at_each_block(tmp_path):
    rows = [{"target": t, "seed": s, "point": {}, "metrics": {"linear_probe.top1_block0": a,
                                                              "linear_probe.top1_block1": b}}
            for t, s, a, b in [("x", 0, 10.0, 20.0), ("x", 1, 12.0, 26.0), ("y", 0, 30.0, 5.0)]]
    rows.append({"target": "z", "seed": 0, "point": {}, "metrics": {"linear_probe.top1": 50.0}})
    assert report.per_block(rows) == {"x": pytest.approx([11.0, 23.0]), "y": pytest.approx([30.0, 5.0])}
    assert report.block_curves(rows, tmp_path).name == "per_block_linear_probe.png"
