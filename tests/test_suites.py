"""Suites: checked before they run, resumable, and reported with a confidence interval."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from mimbench.errors import ConfigError
from mimbench.evals.backbone import load_backbone
from mimbench.model_source import ModelSource
from mimbench.suites import report, runner, schema
from tests.conftest import run_cli, start_cli, wait_until

SMALL = """
name: small
description: two targets, two seeds, smoke sized
preset: smoke
targets: [pixels, random]
seeds: [0, 1]
set:
  optim.steps: 4
evals: [linear]
compare: [pixels, random]
"""


@pytest.mark.parametrize("text, words", [
    (SMALL + "colour: red\n", "unknown suite key 'colour'"),
    (SMALL + "primary: {compare: [pixels, random], metrics: [knn.top1]}\n", "primary metric 'knn.top1'"),
    (SMALL + "primary: {compare: [pixels, clip], metrics: [linear_probe.top1]}\n", "must name two of its targets"),
    (SMALL + "teachers_per_seed: yes please\n", "'teachers_per_seed' must be true or false"),
    (SMALL.replace("[pixels, random]\nseeds", "[pixles, random]\nseeds"), "unknown target 'pixles'"),
    (SMALL + "grid:\n  mask.ratio: []\n", "'mask.ratio' must be a non-empty list"),
    (SMALL.replace("seeds: [0, 1]", "seeds: []"), "'seeds' must be a non-empty list"),
    (SMALL.replace("optim.steps: 4", "optim.stpes: 4"), "unknown config key 'optim.stpes'"),
    (SMALL.replace("evals: [linear]", "evals: [linaer]"), "unknown evaluation 'linaer'"),
])
def test_malformed_suites_are_rejected_before_any_run(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        schema.load(str(path))
    result = run_cli("suite", "run", path, "--out", tmp_path / "out")
    assert result.returncode == 2 and words in result.stderr
    assert not (tmp_path / "out").exists()


def test_shipped_suites_load_and_expand():
    assert set(schema.shipped()) >= {"tiny", "mvp_vitb16_300ep", "beit_vitb16_300ep",
                                     "ablate_mask_ratio", "ablate_target_layer"}
    tiny = schema.load("tiny")
    runs = {r.id: r for r in tiny.runs()}
    assert len(runs) == 6 * 5 and len(tiny.primary) == 6 * 3
    assert set(tiny.targets) == {"clip", "dvae", "pixels", "vqkd", "random", "teacher"}
    teacher = runs["teacher-s1"]
    assert teacher.source == "target:clip" and teacher.config.run.evals == tiny.evals
    assert teacher.config.target.options["layer"] == 3  # the teacher's best stage, its row only
    assert teacher.config.target.options["model"] == "teacher:clip?seed=1"  # seed 1's own build
    assert runs["clip-s1"].config.target.options["layer"] == 2
    assert runs["vqkd-s2"].config.target.options["weights"] == "teacher:vqkd?seed=2&teacher=clip?seed=2"
    assert all(r.config.eval_data.val["split"] == "test" for r in runs.values())  # the headline split
    # the world results of bootstrap, multi_teacher and recipe_grid reuse the tiny suite's runs
    for name, row, tiny_row in (("bootstrap", "clip-s1", "clip-s1"), ("multi_teacher", "pixels-s1", "pixels-s1"),
                                ("recipe_grid", "clip-ratio0.45-lossmse-s1", "clip-s1"),
                                ("caption_naming", "clip-p1-s1", "clip-s1"), ("caption_naming", "random-s1", "random-s1")):
        reused = {r.id: r for r in schema.load(name).runs()}[row].config
        assert not schema.cfg.differing_keys(reused, runs[tiny_row].config), name
    [multi] = [r for r in schema.load("multi_teacher").runs() if r.id == "clip_pixels-s1"]
    assert multi.config.target.options["teachers"][0]["model"] == "teacher:clip?seed=1"
    ratios = [r.config.mask.ratio for r in schema.load("ablate_mask_ratio").runs()]
    assert ratios == [0.2, 0.3, 0.4, 0.5, 0.6]
    mvp = schema.load("mvp_vitb16_300ep").runs()[0].config
    assert (mvp.student.embed_dim, mvp.optim.epochs, mvp.target.options["model"]) == (768, 300, "ViT-B-16")


@pytest.mark.parametrize("name", ["mvp_vitb16_300ep", "beit_vitb16_300ep", "maskdistill_vitb16_300ep"])
def test_paper_suites_dry_run_shows_their_compute(name, tmp_path):
    result = run_cli("suite", "run", name, "--dry-run", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "of GPU time" in result.stdout and "PFLOPs" in result.stdout
    # ViT-B/16 at 224: ~17.6 GMACs forward, x2 FLOPs per MAC, x3 for forward + backward
    total = float(result.stdout.split("total: ")[1].split(" PFLOPs")[0].replace(",", ""))
    images = (300 + 100) * 1_281_167
    assert 0.8 * images * 17.6e9 * 6 / 1e15 < total < 1.25 * images * 17.6e9 * 6 / 1e15


def test_dry_run_counts_each_evaluation_of_the_paper_recipe_by_hand(tmp_path, monkeypatch):
    from mimbench.suites.estimate import estimate

    monkeypatch.setenv("MIMBENCH_HOME", str(tmp_path))  # the dry run times and keeps a CPU rate
    mvp = schema.load("mvp_vitb16_300ep")
    stages = estimate(mvp.runs(), mvp.preset)["runs"][0]["stages"]

    def vit(patches, d=768, depth=12):  # ViT-B/16's multiply-accumulates for one image
        tokens = patches + 1
        return patches * 768 * d + depth * tokens * (12 * d * d + 2 * tokens * d)

    # BEiT's UperNet at crop 512: the 32x32 grid resampled to 128, 64, 32 and 16; 768 channels,
    # 150 classes; the auxiliary FCN head 256 wide
    d, c, k, a = 768, 768, 150, 256
    decoder = (d * d * 4 * (32**2 + 64**2 + 32**2)  # the pyramid's transposed convolutions
               + c * d * (128**2 + 64**2 + 32**2)  # lateral 1x1 convolutions
               + d * c * (1 + 4 + 9 + 36)  # pyramid pooling
               + 9 * (d + 4 * c) * c * 16**2  # bottleneck
               + 9 * c * c * (128**2 + 64**2 + 32**2)  # FPN 3x3 convolutions
               + 9 * 4 * c * c * 128**2 + c * k * 128**2  # fusion, classifier
               + 9 * d * a * 32**2 + a * k * 32**2)  # auxiliary head
    imagenet, val = 1_281_167, 50_000
    steps = 100 * (imagenet // 1024)  # fine-tuning: 100 epochs of whole batches of 1024
    # FLOPs: 2 a multiply-accumulate, 3x the forward for forward + backward
    expected = {"probes": (imagenet + val) * 2 * vit(196),  # features of both splits, once for linear and k-NN
                "finetune": steps * 1024 * 6 * vit(196) + val * 2 * vit(196),
                "segmentation": 160_000 * 16 * 6 * (vit(1024) + decoder) + 2_000 * 2 * (vit(1024) + decoder)}
    for stage, flops in expected.items():
        assert stages[stage][1] == pytest.approx(flops, rel=0.01), stage
    assert stages["pretrain"][0] == 300 * (imagenet // 2048) * 2048  # 300 epochs of whole batches


def test_dry_run_plans_with_its_presets_bench_rate_and_the_teachers_to_build(tmp_path):
    """A smoke bench (a step of mostly overhead) never sets the rate a tiny suite is planned
    with; a tiny bench does, and the dry run says where its rate comes from."""
    smoke = run_cli("bench", "--preset", "smoke", "--target", "pixels", "--repeats", "1")
    assert smoke.returncode == 0, smoke.stderr
    result = run_cli("suite", "run", "tiny", "--dry-run", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    # an empty cache: each seed's three teachers, vqkd after the clip teacher it distils
    said = " ".join(result.stdout.split())
    seeds = range(5)
    assert ("teachers to build first: " + ", ".join([*(f"clip?seed={s}" for s in seeds), *(f"dvae?seed={s}" for s in seeds),
                                                    *(f"vqkd?seed={s}&teacher=clip?seed={s}" for s in seeds)])) in said
    assert "tiny preset: timed on a tiny student step" in said, said[-600:]
    tiny = run_cli("bench", "--preset", "tiny", "--target", "pixels", "--repeats", "1")
    assert tiny.returncode == 0, tiny.stderr
    achieved = tiny.stdout.split("achieved")[1].split("GFLOP/s")[0].strip(" │|")
    result = run_cli("suite", "run", "tiny", "--dry-run", "--out", tmp_path / "out")
    assert (f"at {float(achieved.replace(',', '')):,.0f} GFLOP/s a run, tiny preset: measured by "
            f"mimbench bench --preset tiny --target pixels") in " ".join(result.stdout.split())


def test_reference_rows_plan_no_teacher_build():
    """The random-init row resolves the preset's target (clip at tiny) but never builds it: a
    pixels suite plans no teacher."""
    from mimbench.suites.estimate import teachers_needed

    path_runs = schema.Suite(name="s", description="", preset="tiny", targets=("pixels", "random", "supervised"),
                             seeds=(0,), grid={}, set={}, evals=("linear",), compare=(), expect=(),
                             source=Path("."), teachers_per_seed=True).runs()
    assert path_runs[1].config.target.name == "clip" and teachers_needed(path_runs) == []


def test_durations_have_one_significant_figure():
    from mimbench.suites.estimate import duration

    assert [duration(h) for h in (0.01, 0.26, 2.4, 130 * 24)] == [
        "under a minute", "about 20 min", "about 2 h", "about 100 days"]


def test_paired_gap_matches_a_hand_computed_t_interval():
    rows = [{"target": t, "seed": s, "point": {}, "metrics": {"m": v}}
            for t, values in (("a", [50.0, 53.0, 51.0]), ("b", [45.0, 47.5, 46.0])) for s, v in enumerate(values)]
    gap = report.paired_gap(rows, "a", "b", "m")
    d = np.array([5.0, 5.5, 5.0])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert gap["mean"] == pytest.approx(d.mean())
    assert (gap["low"], gap["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert report.describe_gap(gap).startswith("a vs b: +5.2 m (95% CI")
    assert "significant" in report.describe_gap(gap)
    rows.append({"target": "c", "seed": 0, "point": {}, "metrics": {"m": 48.0}})
    assert report.ordering(rows, "m") == "Ordering by mean: a (51.33) > c (48.00) > b (46.17)."


def test_equal_values_get_no_interval_and_no_warning():
    """Accuracies on a small val set are multiples of 1/N: two seeds can tie exactly. The report
    then says there is no spread, rather than printing nan..nan or blaming too few seeds."""
    import warnings

    rows = [{"target": t, "seed": s, "point": {}, "metrics": {"m": v}}
            for t, values in (("a", [18.75, 18.75]), ("b", [17.0, 17.0])) for s, v in enumerate(values)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns on a zero scale
        m, low, high = report.mean_ci([18.75, 18.75])
        gap = report.paired_gap(rows, "a", "b", "m")
    assert m == 18.75 and np.isnan(low) and np.isnan(high)
    assert report.describe_gap(gap) == ("a vs b: +1.8 m (the same difference on each of 2 seeds: "
                                        "no spread to build a confidence interval from)")
    assert report.describe_gap(report.paired_gap(rows[:1] + rows[2:3], "a", "b", "m")).endswith(
        "(n = 1 seed: too few for a confidence interval)")


def test_grid_changes_pair_each_target_and_each_gap_by_seed():
    values = {("a", "x"): [50.0, 53.0, 51.0], ("b", "x"): [45.0, 47.5, 46.0],
              ("a", "y"): [52.0, 56.0, 52.5], ("b", "y"): [45.5, 47.0, 46.5]}
    rows = [{"target": t, "seed": s, "point": {"style": p}, "metrics": {"m": v}}
            for (t, p), vs in values.items() for s, v in enumerate(vs)]
    a_change, b_change, gap_change = report.grid_changes(rows, ["a", "b"], [["a", "b"]], "m",
                                                         {"style": "x"}, {"style": "y"})
    d = np.array([2.0, 3.0, 1.5])  # a at y minus a at x
    assert a_change["mean"] == pytest.approx(d.mean()) and a_change["a"] == "a at style=y"
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert (a_change["low"], a_change["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert b_change["mean"] == pytest.approx(np.mean([0.5, -0.5, 0.5]))
    # (a - b) at y = 6.5, 9, 6; at x = 5, 5.5, 5: the gap grows by 1.5, 3.5, 1
    assert gap_change["mean"] == pytest.approx(2.0) and gap_change["n"] == 3
    assert gap_change["a"] == "(a - b) at style=y" and gap_change["b"] == "(a - b) at style=x"


def last_finished(out):
    runs = sorted((out / "runs").glob("*/results.json")) if (out / "runs").exists() else []
    finished = []
    for path in runs:
        try:
            if "linear_probe" in json.loads(path.read_text()).get("evals", {}):
                finished.append(path.parent.name)
        except json.JSONDecodeError:  # being replaced right now
            pass
    return finished


def test_interrupted_suite_continues_without_redoing_finished_runs(tmp_path):
    suite, out = tmp_path / "small.yaml", tmp_path / "out"
    suite.write_text(SMALL)
    proc = start_cli("suite", "run", suite, "--out", out)
    wait_until(lambda: last_finished(out), proc, timeout=240, poll=0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = last_finished(out)
    assert finished and len(finished) < 4, "the suite was not interrupted mid-way"
    stamps = {name: (out / "runs" / name / "results.json").stat().st_mtime_ns for name in finished}

    result = run_cli("suite", "run", suite, "--out", out)
    assert result.returncode == 0, result.stderr
    for name in finished:
        assert f"{name}: finished earlier, reused" in result.stderr
        assert (out / "runs" / name / "results.json").stat().st_mtime_ns == stamps[name]
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(r["id"] for r in rows) == ["pixels-s0", "pixels-s1", "random-s0", "random-s1"]
    assert all("linear_probe.top1" in r["metrics"] for r in rows)
    assert rows[0]["config_diff"]["optim.steps"] == 4
    text = (out / "report.md").read_text()
    assert "pixels vs random:" in text and "95% CI" in text
    for png in ("bars_linear_probe_top1.png", "loss_curves.png", "examples.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    for checkpoint in (out / "runs").glob("*/checkpoint*.pt"):  # deleted to save space
        checkpoint.unlink()
    again = run_cli("suite", "run", suite, "--out", out)
    assert again.returncode == 0, again.stderr
    assert not (out / "examples.png").exists()  # no student left to draw, and no stale picture
    assert (out / "bars_linear_probe_top1.png").exists() and "pixels vs random:" in (out / "report.md").read_text()


def test_ablation_suite_draws_its_line_plot(tmp_path):
    suite = tmp_path / "ablate.yaml"
    suite.write_text(SMALL.replace("[pixels, random]\nseeds", "[pixels]\nseeds").replace("compare: [pixels, random]\n", "")
                     .replace("seeds: [0, 1]", "seeds: [0]") + "grid:\n  mask.ratio: [0.3, 0.5]\n")
    result = run_cli("suite", "run", suite, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "ablation_linear_probe_top1.png").read_bytes()[:4] == b"\x89PNG"
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert [r["point"]["mask.ratio"] for r in rows] == [0.3, 0.5]


def test_suite_runs_as_submitit_jobs_and_reports(tmp_path):
    """The cluster path (one submitit job per run) on submitit's local executor: each run is a
    job with its own logs; the report is written once they finish, with the same rows as the
    default path on this machine; a second call reuses the runs."""
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL.replace("seeds: [0, 1]", "seeds: [0]"))
    out = tmp_path / "out"
    result = run_cli("suite", "run", suite, "--out", out, "--executor", "local",
                     "--cpus-per-run", "2", "--timeout-min", "20")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("submitted ") == 2
    logs = list((out / "submitit").glob("*_log.out"))
    assert len(logs) == 2  # one job per run, each with its own log
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(r["id"] for r in rows) == ["pixels-s0", "random-s0"]
    assert all("linear_probe.top1" in r["metrics"] for r in rows)
    again = run_cli("suite", "run", suite, "--out", out, "--executor", "local")
    assert again.returncode == 0 and "submitted" not in again.stderr
    assert again.stderr.count("finished earlier, reused") == 2
    assert run_cli("suite", "run", suite, "--out", tmp_path / "default").returncode == 0
    default = json.loads((tmp_path / "default" / "results.json").read_text())["runs"]

    def same(row):  # what a run measured, not where or how long
        return {k: v for k, v in row.items() if k not in ("folder", "pretrain")}

    assert [same(r) for r in rows] == [same(r) for r in default]


def test_supervised_ceiling_is_trained_on_labels_and_evaluated_like_a_student(tmp_path):
    path = tmp_path / "ceiling.yaml"
    path.write_text(SMALL.replace("[pixels, random]", "[supervised, random]").replace("seeds: [0, 1]", "seeds: [0]")
                    .replace("optim.steps: 4", "optim.steps: 5\n  optim.batch_size: 16"))
    suite = schema.load(str(path))
    rows = {r["target"]: r for r in runner.run_suite(suite, tmp_path / "out")}
    folder = tmp_path / "out" / "runs" / "supervised-s0"
    pretrain = json.loads((folder / "results.json").read_text())["pretrain"]
    assert (pretrain["kind"], pretrain["steps"], pretrain["batch"]) == ("supervised", 5, 16)
    assert pretrain["recipe"]["layer_decay"] == 1.0 and np.isfinite(pretrain["final_loss"])
    assert set(rows["supervised"]["metrics"]) == set(rows["random"]["metrics"]) == {"linear_probe.top1"}
    # the evaluations read the encoder trained with labels, not the seed's random init
    config = suite.runs()[0].config
    trained = load_backbone(ModelSource.parse(folder), config)[0].state_dict()
    untrained = load_backbone(ModelSource.parse("timm:random"), config)[0].state_dict()
    assert trained.keys() == untrained.keys()
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], untrained["blocks.0.attn.qkv.weight"])
    stamp = (folder / "checkpoint.pt").stat().st_mtime_ns
    runner.run_suite(suite, tmp_path / "out")  # finished: reused, not retrained
    assert (folder / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_parallel_jobs_finish_every_run_and_reuse_them(tmp_path):
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL)
    out = tmp_path / "out"
    result = run_cli("suite", "run", suite, "--out", out, "--jobs", "2")
    assert result.returncode == 0, result.stderr
    rows = json.loads((out / "results.json").read_text())["runs"]
    assert sorted(r["id"] for r in rows) == ["pixels-s0", "pixels-s1", "random-s0", "random-s1"]
    assert all("linear_probe.top1" in r["metrics"] for r in rows)
    assert all(len(r["loss_curve"]) == 4 for r in rows if r["target"] == "pixels")
    # the workers' progress reaches the suite's log, named by run
    assert "pixels-s0 pre-training 4/4" in result.stderr and "pixels-s1 pre-training 4/4" in result.stderr
    again = run_cli("suite", "run", suite, "--out", out, "--jobs", "2")
    assert again.returncode == 0 and again.stderr.count("finished earlier, reused") == 4


def test_grid_points_and_comparison_pairs(tmp_path):
    path = tmp_path / "points.yaml"
    path.write_text(SMALL.replace("seeds: [0, 1]", "seeds: [0]").replace(
        "compare: [pixels, random]", "compare: [[pixels, random], [random, pixels]]")
        + "grid:\n  - {}\n  - {student.img_size: 64, student.patch_size: 16}\n")
    suite = schema.load(str(path))
    assert suite.compare == (("pixels", "random"), ("random", "pixels"))
    runs = {r.id: r for r in suite.runs()}
    assert set(runs) == {"pixels-s0", "pixels-img_size64-patch_size16-s0", "random-s0",
                         "random-img_size64-patch_size16-s0"}
    moved = runs["pixels-img_size64-patch_size16-s0"].config.student
    assert (moved.img_size, moved.patch_size) == (64, 16)
    assert runs["pixels-s0"].config.student == schema.load(str(path)).runs()[0].config.student
    path.write_text(SMALL + "grid:\n  - {mask.ratio: 0.3}\n  - {mask.ratio: 0.3}\n")
    with pytest.raises(ConfigError, match="lists the grid point {\"mask.ratio\": 0.3} twice"):
        schema.load(str(path))


def test_teacher_row_probes_the_targets_own_features(tmp_path):
    """The teacher row: the clip target's frozen features, pooled, in the probes (computed here
    by hand from the teacher), and its network fine-tuned in the trained evaluations."""
    from mimbench import config as cfg
    from mimbench.targets.source import build_target_for
    from mimbench.evals.data import eval_dataset

    path = tmp_path / "teacher.yaml"
    path.write_text(SMALL.replace("[pixels, random]\nseeds", "[teacher, random]\nseeds")
                    .replace("seeds: [0, 1]", "seeds: [0]").replace("evals: [linear]", "evals: [linear, knn, finetune]")
                    .replace("compare: [pixels, random]", "compare: [teacher, random]"))
    suite = schema.load(str(path))
    rows = {r["target"]: r for r in runner.run_suite(suite, tmp_path / "out")}
    assert set(rows["teacher"]["metrics"]) == {"linear_probe.top1", "knn.top1", "finetune.top1"}
    assert set(rows["random"]["metrics"]) == {"linear_probe.top1", "knn.top1", "finetune.top1"}
    config = cfg.resolve("smoke", target="clip")
    provider = build_target_for(config)
    images = [image for image, _ in (eval_dataset(config, "val")[i] for i in range(5))]
    size = provider.spec.input_size
    views = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]).float() / 255
    if views.shape[-1] != size:
        views = torch.nn.functional.interpolate(views, size=(size, size), mode="bicubic", antialias=True)
    expected = provider(views).mean(1)  # [5, D]
    cached = [torch.load(p, weights_only=True) for p in (tmp_path / "out" / "runs" / "teacher-s0" / "features").glob("*.pt")]
    val = next(c for c in cached if len(c["labels"]) == len(eval_dataset(config, "val")))
    assert torch.allclose(val["features"][:5], expected, atol=1e-4)
    card = json.loads((tmp_path / "out" / "runs" / "teacher-s0" / "results.json").read_text())[
        "evals"]["finetune"]["card"]
    assert card["model"].startswith("target clip's own network")


def test_mae_suites_follow_maes_recipe_and_count_the_visible_patches_only():
    from mimbench.suites.estimate import step_flops_per_image

    run = schema.load("mae_vitb16_800ep").runs()[0]
    c = run.config
    assert (c.student.style, c.student.model, c.mask.kind, c.mask.count(c.student.grid)) == (
        "mae", "vit_base_patch16_224", "random", 147)
    assert (c.optim.lr, c.optim.lr_base_batch, c.optim.betas, c.optim.epochs) == (2.4e-3, 4096, (0.9, 0.95), 800)
    assert c.target.options["normalize"] and c.data.crop_scale == (0.2, 1.0)
    # multiply-accumulates of one image, written out: patch embedding; 12 encoder blocks on
    # the cls token + 49 visible patches; the decoder's input projection; 8 decoder blocks of
    # 512 on all 197 tokens; the pixel head (768 values a patch) on the 196 patches
    def blocks(depth, tokens, width):
        return depth * tokens * (12 * width**2 + 2 * tokens * width)

    macs = (196 * 768 * 768 + blocks(12, 50, 768) + 50 * 768 * 512 + blocks(8, 197, 512)
            + 196 * 512 * 768)
    flops = step_flops_per_image(run)
    assert 0.9 < flops / (6 * macs) < 1.1  # forward + backward: 3x the forward's 2 x MACs
    style = schema.load("ablate_style").runs()
    masks = {r.config.student.style: (r.config.mask.kind, r.config.mask.ratio) for r in style}
    assert masks == {"beit": ("block", 0.45), "mae": ("random", 0.75)}


def test_beitv2_suite_is_beits_preset_with_beit_v2s_long_schedule():
    c = schema.load("beitv2_vitb16_1600ep").runs()[0].config
    assert (c.target.name, c.target.options["weights"], c.student.grid) == ("vqkd", "official", (14, 14))
    assert (c.optim.epochs, c.optim.betas, c.optim.lr, c.data.crop_scale) == (1600, (0.9, 0.999), 1.5e-3, (0.2, 1.0))
    assert (c.mask.num_masked, c.student.layer_scale, c.student.drop_path) == (75, 0.1, 0.1)


def test_editing_a_suites_set_reruns_the_runs_it_changed_and_reuses_the_rest(tmp_path):
    """A run's identity is its whole config: after `set:` changes, runs saved under the old
    config are run afresh (never resumed or reused under the new name); unchanged ones are reused."""
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.replace("seeds: [0, 1]", "seeds: [0]"))
    out = tmp_path / "out"
    assert run_cli("suite", "run", path, "--out", out).returncode == 0
    random_stamp = (out / "runs" / "random-s0" / "results.json").stat().st_mtime_ns

    path.write_text(SMALL.replace("seeds: [0, 1]", "seeds: [0]").replace("optim.steps: 4", "optim.steps: 5"))
    result = run_cli("suite", "run", path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "pixels-s0: saved under another config (optim.steps); running it afresh" in result.stderr
    pixels = json.loads((out / "runs" / "pixels-s0" / "results.json").read_text())
    assert pixels["pretrain"]["steps"] == 5 and pixels["config"]["optim"]["steps"] == 5
    assert [json.loads(line)["step"] for line in
            (out / "runs" / "pixels-s0" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]
    saved = yaml.safe_load((out / "runs" / "random-s0" / "config.yaml").read_text())
    assert saved["optim"]["steps"] == 5  # the reference row records the config it ran under
    assert (out / "runs" / "random-s0" / "results.json").stat().st_mtime_ns != random_stamp

    again = run_cli("suite", "run", path, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "pixels-s0: finished earlier, reused" in again.stderr
    assert "random-s0: finished earlier, reused" in again.stderr


def test_a_shipped_suite_runs_at_smoke_size_under_its_own_name(tmp_path):
    """suite run NAME --preset smoke: every run on the smoke preset, named NAME-smoke, so a
    shipped ablation can be tried in seconds before its real size."""
    result = run_cli("suite", "run", "ablate_target_layer", "--preset", "smoke", "--set",
                     "run.evals=[linear]", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "suite ablate_target_layer-smoke-set" in result.stderr
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    assert sorted(r["point"]["target.layer"] for r in rows) == [1, 2, 3]
    assert all("linear_probe.top1" in r["metrics"] for r in rows)
    saved = yaml.safe_load((tmp_path / "out" / "runs" / "clip-layer3-s0" / "config.yaml").read_text())
    assert saved["run"]["preset"] == "smoke" and saved["run"]["evals"] == ["linear"]


def test_a_grid_runs_each_reference_row_once_per_seed(tmp_path):
    """mask.ratio does not touch a random-init row: it runs once per seed, stands at both grid
    points in the report, and gets no 'random at mask.ratio=0.5' change of +0."""
    path = tmp_path / "grid.yaml"
    path.write_text(SMALL.replace("seeds: [0, 1]", "seeds: [0]") + "grid:\n  mask.ratio: [0.3, 0.5]\n")
    suite = schema.load(str(path))
    assert sorted(r.id for r in suite.runs()) == ["pixels-ratio0.3-s0", "pixels-ratio0.5-s0", "random-s0"]
    result = run_cli("suite", "run", path, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    random_rows = [r for r in rows if r["target"] == "random"]
    assert [r["point"] for r in random_rows] == [{"mask.ratio": 0.3}, {"mask.ratio": 0.5}]
    assert random_rows[0]["metrics"] == random_rows[1]["metrics"] and random_rows[0]["shared"]
    assert (tmp_path / "out" / "runs" / "random-s0" / "config.yaml").exists()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "random at mask.ratio" not in report and "pixels at mask.ratio=0.5" in report
    # a dry run over the same folder prices only what is left: nothing, then the edited point
    plan = run_cli("suite", "run", path, "--out", tmp_path / "out", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    wide = {"COLUMNS": "300"}  # one table row a line
    plan = run_cli("suite", "run", path, "--out", tmp_path / "out", "--dry-run", env=wide)
    assert plan.returncode == 0, plan.stderr
    assert "3 runs, 3 finished in" in plan.stdout and "nothing left to run" in plan.stdout
    path.write_text(path.read_text().replace("[0.3, 0.5]", "[0.3, 0.6]"))
    plan = run_cli("suite", "run", path, "--out", tmp_path / "out", "--dry-run", env=wide)
    left = [line for line in plan.stdout.splitlines() if "-s0" in line and "finished" not in line]
    assert "3 runs, 2 finished in" in plan.stdout and len(left) == 1 and "pixels-ratio0.6-s0" in left[0]
    assert "total of the runs left: " in plan.stdout


def test_holm_adjusts_a_family_as_computed_by_hand():
    # sorted p 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> kept monotone 0.06
    assert report.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert report.holm([0.2, float("nan")]) == pytest.approx([0.4, 1.0])  # NaN counts, as p = 1


def test_the_primary_family_is_reported_with_holm_and_the_rest_uncorrected(tmp_path):
    """Three claims with p of about 1e-5, 0.046 and 0.86 (paired t over 4 seeds): alone the
    second is significant; under Holm (x2) it is not, and the third points the wrong way."""
    values = {"a": [10.0, 11.0, 12.0, 13.0], "b": [5.0, 6.2, 6.8, 8.1], "c": [9.0, 9.0, 11.5, 10.5],
              "d": [11.0, 10.0, 13.5, 12.0]}
    rows = [{"target": t, "seed": s, "point": {}, "metrics": {"m": v}, "loss_curve": None, "folder": ""}
            for t, vs in values.items() for s, v in enumerate(vs)]
    suite = schema.Suite(name="s", description="", preset="smoke", targets=("a", "b", "c", "d"),
                         seeds=(0, 1, 2, 3), grid={}, set={}, evals=("linear",), compare=(("a", "d"),),
                         expect=(), source=tmp_path, primary=(("a", "b", "m"), ("a", "c", "m"), ("d", "a", "m")))
    family = report.primary_family(suite, rows)
    expected = [stats.ttest_rel(values[x], values[y]).pvalue for x, y, _ in suite.primary]
    assert [g["p"] for g in family] == pytest.approx(expected)
    assert expected[0] < 0.025 and 0.025 < expected[1] < 0.05  # significant alone, not under Holm
    assert [g["holds"] for g in family] == [True, False, False]
    assert family[1]["p_holm"] == pytest.approx(2 * expected[1])
    report.write_report(suite, rows, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Primary family: 3 claims, Holm's correction" in text and "1 of 3 claims hold." in text
    assert "## Other comparisons (uncorrected p)" in text
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["primary"]
    assert [g["holds"] for g in saved] == [True, False, False]


def test_a_one_target_grid_reports_each_points_change_paired_by_seed(tmp_path):
    """recipe_grid has one target and no compare: the report still gives each point's change
    against the first, paired by seed (+2, +3, +4 over three seeds: mean +3, sd 1)."""
    base, moved = [10.0, 20.0, 30.0], [12.0, 23.0, 34.0]
    rows = [{"target": "clip", "seed": s, "point": point, "metrics": {"linear_probe.top1": v}, "loss_curve": None,
             "folder": ""} for point, values in (({"mask.ratio": 0.4}, base), ({"mask.ratio": 0.5}, moved))
            for s, v in enumerate(values)]
    suite = schema.Suite(name="g", description="", preset="smoke", targets=("clip",), seeds=(0, 1, 2),
                         grid={"mask.ratio": [0.4, 0.5]}, set={}, evals=("linear",), compare=(), expect=(),
                         source=tmp_path)
    report.write_report(suite, rows, tmp_path / "out")
    text = (tmp_path / "out" / "report.md").read_text()
    [change] = [line for line in text.splitlines() if line.startswith("- clip at mask.ratio=0.5")]
    low, high = stats.t.interval(0.95, 2, loc=3.0, scale=1.0 / 3 ** 0.5)
    assert f"+3.0 linear_probe.top1 (95% CI {low:+.1f}..{high:+.1f}" in change, change


def test_bootstrap_over_images_matches_the_binomial_standard_error():
    """Two targets identical on every seed (no seed variance): the bootstrap's interval is the
    images' alone, 1.96 standard errors of the mean per-image difference either side."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 10_000)
    right_a, right_b = rng.random(10_000) < 0.6, rng.random(10_000) < 0.5
    a = {s: (np.where(right_a, labels, (labels + 1) % 8), labels) for s in range(4)}
    b = {s: (np.where(right_b, labels, (labels + 1) % 8), labels) for s in range(4)}
    low, high = report.bootstrap_gap(a, b)
    d = right_a.astype(float) - right_b
    half = 1.96 * d.std() / np.sqrt(len(d)) * 100
    assert (low + high) / 2 == pytest.approx(d.mean() * 100, abs=0.1 * half)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert report.bootstrap_gap(a, {0: b[0]}) is None  # one shared seed: no interval
    assert report.bootstrap_gap(a, {s: (p, (l + 1) % 8) for s, (p, l) in b.items()}) is None  # other labels


def test_an_evaluation_saves_each_images_prediction(tmp_path):
    """results.json's top-1 is the saved predictions' accuracy, and they are in the val split's order."""
    from mimbench.evals.data import eval_dataset
    from mimbench.run_dir import read_predictions

    result = run_cli("run", "--preset", "smoke", "--target", "pixels", "--set", "run.evals=[linear, knn, finetune]",
                     "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    val = eval_dataset(schema.cfg.from_dict(saved["config"]), "val")
    for name in ("linear_probe", "knn", "finetune"):
        predicted, labels = read_predictions(tmp_path / "run", name)
        assert saved["evals"][name]["card"]["predictions"] == f"predictions/{name}.npz"
        assert labels.tolist() == [val[i][1] for i in range(len(val))]
        assert saved["evals"][name]["top1"] == pytest.approx((predicted == labels).mean() * 100)


def teachers_used(suite: Path, out: Path, runs) -> dict:
    """`mimbench suite run SUITE`; each run's teachers (reference -> folder and SHA-256)."""
    result = run_cli("suite", "run", suite, "--out", out)
    assert result.returncode == 0, result.stderr
    return {r: json.loads((out / "runs" / r / "results.json").read_text())["target"]["teachers"] for r in runs}


def test_teachers_per_seed_builds_every_in_project_teacher_and_its_parent_with_the_runs_seed(tmp_path):
    """teachers_per_seed: seed 1's clip row loads a clip teacher built with seed 1, its vqkd
    row a tokenizer built with seed 1 from that same clip teacher; seed 0 keeps the preset's."""
    path = tmp_path / "seeded.yaml"
    path.write_text("preset: smoke\ntargets: [clip, vqkd]\nseeds: [0, 1]\nevals: [linear]\n"
                    "teachers_per_seed: true\nset: {optim.steps: 2}\n")
    runs = {r.id: r for r in schema.load(str(path)).runs()}
    assert runs["clip-s1"].config.target.options["model"] == "teacher:clip-smoke?seed=1"
    assert runs["vqkd-s1"].config.target.options["weights"] == "teacher:vqkd-smoke?seed=1&teacher=clip-smoke?seed=1"
    used = teachers_used(path, tmp_path / "out", runs)
    clip = {s: next(iter(used[f"clip-s{s}"].values()))["sha256"] for s in (0, 1)}
    assert clip[0] != clip[1]
    for seed in (0, 1):
        [vqkd_folder] = [t["folder"] for t in used[f"vqkd-s{seed}"].values()]
        built_from = json.loads((Path(vqkd_folder) / "report.json").read_text())["built_from"]
        assert list(built_from.values()) == [clip[seed]]


def test_teachers_per_seed_reaches_the_teachers_of_a_multi_target(tmp_path):
    """A multi target's teachers carry their own options: teachers_per_seed seeds the
    in-project teacher inside them too, and the run's results record that teacher, so a
    multi row's intervals hold teacher-build variance like the clip row's."""
    path = tmp_path / "multi.yaml"
    path.write_text("preset: smoke\nvariants:\n  both: {target: multi, set: {target.teachers: "
                    "[{name: clip, model: 'teacher:clip-smoke', layer: 2}, pixels], target.weights: [1, 1], "
                    "target.standardize: false}}\ntargets: [both]\nseeds: [1]\nevals: [linear]\n"
                    "teachers_per_seed: true\nset: {optim.steps: 2}\n")
    runs = {r.id: r for r in schema.load(str(path)).runs()}
    clip, pixels = runs["both-s1"].config.target.options["teachers"]
    assert clip == {"name": "clip", "model": "teacher:clip-smoke?seed=1", "layer": 2} and pixels == "pixels"
    from mimbench.suites.estimate import teachers_needed
    assert teachers_needed(list(runs.values())) == ["clip-smoke?seed=1"]  # the dry run's list
    used = teachers_used(path, tmp_path / "out", runs)["both-s1"]
    assert list(used) == ["teacher:clip-smoke?seed=1"]
    built = json.loads((Path(used["teacher:clip-smoke?seed=1"]["folder"]) / "report.json").read_text())
    assert built["teacher"] == "clip-smoke?seed=1" and built["config"]["seed"] == 1  # the build the run loaded


def test_a_variant_row_is_a_target_with_its_own_settings_and_teachers_per_seed(tmp_path):
    """variants: a row 'clip-unnamed' is the clip target with its own target.model; '{seed}'
    makes each seed build its own teacher (teacher-build variance in the intervals). The shipped
    caption_naming suite has such rows (seeded by teachers_per_seed)."""
    path = tmp_path / "variants.yaml"
    path.write_text("preset: smoke\nvariants:\n  clip-unnamed: {target: clip, set: {target.model: "
                    "'teacher:clip-smoke?name_probability=0&seed={seed}'}}\n"
                    "targets: [clip, clip-unnamed]\nseeds: [0, 1]\nevals: [linear]\n")
    runs = {r.id: r for r in schema.load(str(path)).runs()}
    assert sorted(runs) == ["clip-s0", "clip-s1", "clip-unnamed-s0", "clip-unnamed-s1"]
    assert runs["clip-unnamed-s1"].config.target.name == "clip"
    assert runs["clip-unnamed-s1"].config.target.options["model"] == "teacher:clip-smoke?name_probability=0&seed=1"
    assert runs["clip-s1"].config.target.options["model"] == "teacher:clip-smoke"
    used = teachers_used(path, tmp_path / "out", runs)
    shas = {r: next(iter(t.values()))["sha256"] for r, t in used.items()}
    assert len({shas["clip-unnamed-s0"], shas["clip-unnamed-s1"], shas["clip-s0"]}) == 3  # own builds
    assert shas["clip-s0"] == shas["clip-s1"]  # the plain row shares the preset's teacher
    assert "clip-unnamed" in (tmp_path / "out" / "report.md").read_text()
    caption = schema.load("caption_naming")
    assert len(caption.runs()) == 5 * 5 and caption.variants["clip-supervised"][0] == "clip"
    with pytest.raises(ConfigError, match="variant 'x' names unknown target 'clp'"):
        path.write_text("variants:\n  x: {target: clp}\ntargets: [x]\n")
        schema.load(str(path))
    with pytest.raises(ConfigError, match="variant 'random' .* is named like a target or a reference row"):
        path.write_text("variants:\n  random: {target: clip}\ntargets: [random]\n")
        schema.load(str(path))


def test_grid_values_are_made_safe_for_folder_names():
    assert schema.safe_name("a/b c") == "a_b_c" and schema.safe_name([1, 2]) == "1_2"
    assert schema.safe_name(0.3) == "0.3" and schema.safe_name("../x") == ".._x"


def test_plotted_intervals_stay_within_a_percentages_range():
    m, below, above = report.bar_extent([2.0, 1.0, 9.0])  # a t interval reaching below 0
    _, low, high = report.mean_ci([2.0, 1.0, 9.0])
    assert low < 0 and m - below == 0.0 and m + above == pytest.approx(high)
    m, below, above = report.bar_extent([99.0, 97.0, 100.0])
    assert m + above == 100.0 and report.mean_ci([99.0, 97.0, 100.0])[2] > 100
    assert report.short_label({"mask.ratio": 0.3, "target.layer": 2}) == "ratio=0.3, layer=2"


def test_ctrl_c_stops_a_suite_with_jobs_and_no_worker_starts_another_run(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: the suite's process and its
    two workers stop (the training ones at a checkpoint), no queued run starts, the command
    ends with one sentence; the same command then finishes the suite."""
    path = tmp_path / "small.yaml"
    # pixels runs of 3,000 steps (~30 s here), random rows of seconds: the fourth run can start
    # only once a pixels run ends, long after the signal
    path.write_text(SMALL.replace("optim.steps: 4", "optim.steps: 3000\n  run.checkpoint_every: 10"))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mimbench", "suite", "run", str(path), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    wait_until(lambda: list(out.glob("runs/pixels-s*/checkpoint.pt")), proc, timeout=180, poll=0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    assert "the suite stopped" in stderr and "Traceback" not in stderr
    started = {p.parent.name for p in out.glob("runs/*/config.yaml")}
    time.sleep(2)  # no worker left behind to start another run
    assert {p.parent.name for p in out.glob("runs/*/config.yaml")} == started
    assert len(started) < 4, "every run started: the suite was not stopped"

    again = run_cli("suite", "run", path, "--out", out, "--jobs", "2", timeout=600)
    assert again.returncode == 0, again.stderr
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 4


def test_dry_run_shares_the_threads_among_its_jobs(tmp_path):
    """With --jobs 2 on 2 threads, the runs go side by side at the 1-thread rate: two equal
    runs take one run's time at that rate; one at a time, the 2-thread rate, both runs."""
    from mimbench.suites.estimate import RUN_OVERHEAD_S, START_S, estimate, save_rate

    path = tmp_path / "small.yaml"
    path.write_text(SMALL.replace("targets: [pixels, random]", "targets: [pixels]").replace(
        "compare: [pixels, random]\n", ""))  # two equal runs: pixels on seeds 0 and 1
    runs = schema.load(str(path)).runs()
    save_rate(4e9, "a 2-thread bench", "smoke", threads=2)
    save_rate(3e9, "a 1-thread bench", "smoke", threads=1)
    own = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone, shared = estimate(runs, "smoke", jobs=1), estimate(runs, "smoke", jobs=2)
    finally:
        torch.set_num_threads(own)
    assert (alone["threads_per_job"], shared["threads_per_job"]) == (2, 1)
    run_flops = alone["runs"][0]["flops"]
    assert alone["total_flops"] == pytest.approx(2 * run_flops)
    set_up = RUN_OVERHEAD_S["run"]  # the linear probe adds none
    assert alone["cpu_hours"] * 3600 == pytest.approx(START_S + 2 * (run_flops / 4e9 + set_up))
    assert shared["cpu_hours"] * 3600 == pytest.approx(START_S + run_flops / 3e9 + set_up)


@pytest.mark.parametrize("jobs, expected", [
    (2, 20.0),  # three 10 s runs on two jobs: the third starts when the first ends
    (4, 10.0),  # more jobs than runs
])
def test_runs_go_to_the_first_free_job(jobs, expected):
    from mimbench.suites.estimate import Task, finish_time

    tasks = [Task(f"r{i}", 0, (), [], 10.0) for i in range(3)]
    assert finish_time(tasks, {}, jobs) == expected


def test_a_chain_of_runs_waits_and_teachers_are_built_once():
    """dBOT's stages (each loads the one before) run one after another whatever the jobs;
    a VQ-KD run waits for the CLIP teacher another job is building, then builds its own."""
    from mimbench.suites.estimate import Task, finish_time

    chain = [Task("stage0", 0, (), [], 10.0), Task("stage1", 0, ("stage0",), [], 10.0),
             Task("stage2", 0, ("stage1",), [], 10.0)]
    assert finish_time(chain, {}, 3) == 30.0
    built = [Task("clip", 0, (), ["clip"], 10.0), Task("vqkd", 0, (), ["clip", "vqkd"], 10.0),
             Task("clip2", 1, (), ["clip"], 10.0)]
    # job 0: clip built 0-5, run 5-15; job 1: waits to 5, builds vqkd 5-8, run 8-18;
    # clip2 starts at 15 on job 0, the teacher built: ends 25
    assert finish_time(built, {"clip": 5.0, "vqkd": 3.0}, 2) == 25.0


def test_a_smoke_suites_estimate_holds_within_2x_after_a_smoke_bench(tmp_path):
    """The dry run's time for a smoke suite, after `mimbench bench --preset smoke` (whose rate
    once replaced the one every estimate used), against the suite's measured wall time. The
    ratio is printed; the bound is the issue's factor of 2, not a timing assertion."""
    from mimbench.suites.estimate import estimate

    assert run_cli("bench", "--preset", "smoke", "--target", "pixels", "--repeats", "2").returncode == 0
    path = tmp_path / "small.yaml"
    path.write_text(SMALL.replace("evals: [linear]", "evals: [linear, knn, finetune]"))
    suite = schema.load(str(path))
    estimated = estimate(suite.runs(), suite.preset)["cpu_hours"] * 3600
    started = time.perf_counter()
    result = run_cli("suite", "run", path, "--out", tmp_path / "out")
    measured = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    print(f"smoke suite: estimated {estimated:.1f} s, measured {measured:.1f} s, "
          f"ratio {measured / estimated:.2f}")
    assert 0.5 <= measured / estimated <= 2.0
