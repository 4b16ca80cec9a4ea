"""Tiny teachers: cached by config hash, rebuilt when damaged, one builder at a time."""

import json
import subprocess
import sys
import time

import pytest
import torch

from mimbench import teachers


def test_smoke_teachers_build_once_and_are_reused():
    started = time.perf_counter()
    folder, report = teachers.ensure("clip-smoke")
    took = time.perf_counter() - started
    assert (folder / "open_clip_config.json").exists() and report["teacher"] == "clip-smoke"
    correct = report["zero_shot_shape_acc"] * report["eval_pairs"]  # a count of the 64 pairs
    assert report["eval_pairs"] == 64 and abs(correct - round(correct)) < 1e-6
    assert abs(report["build_seconds"] - took) <= 1.5  # the build is nearly all of ensure's time; rounded to 1 s
    assert report["threads"] == torch.get_num_threads()
    stamp = (folder / "report.json").stat().st_mtime_ns
    again, _ = teachers.ensure("clip-smoke")
    assert again == folder and (folder / "report.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_damaged_teacher_is_rebuilt(damage):
    folder, report = teachers.ensure("dvae-smoke")
    weights = folder / "encoder.safetensors"
    if damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:100])
    rebuilt, new_report = teachers.ensure("dvae-smoke")
    assert rebuilt == folder and teachers.sha256(weights) == new_report["sha256"]
    assert new_report["sha256"] == report["sha256"]  # same config, same seed: the same teacher


@pytest.mark.parametrize("name", ["clip-smoke", "supervised-smoke", "dvae-smoke", "vqkd-smoke"])
def test_ctrl_c_stops_a_teacher_build_which_then_resumes_to_the_same_weights(name, tmp_path, monkeypatch):
    """The first Ctrl-C (a real SIGINT) stops a build after its step in flight and saves its
    state, in one sentence, with no cache entry; the next build continues from the saved step
    and gives the weights of a build never stopped (model, optimizer and both random streams
    restored)."""
    import signal

    from mimbench.errors import Interrupted

    torch.set_num_threads(1)
    handler = signal.getsignal(signal.SIGINT)  # SIG_IGN where the shell started pytest in the background
    monkeypatch.setenv("MIMBENCH_HOME", str(tmp_path / "straight"))
    _, straight = teachers.ensure(name)
    monkeypatch.setenv("MIMBENCH_HOME", str(tmp_path / "stopped"))
    task = f"teacher {name.split('-')[0]}"

    def ctrl_c_after_step_1(task_, step, total, metrics):
        if task_ == task and step == 1:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(Interrupted, match=f"{task} stopped at step 1 of .*same command continues"):
        teachers.ensure(name, ctrl_c_after_step_1)
    assert not teachers.cached(name)
    steps = []
    _, resumed = teachers.ensure(name, lambda task_, step, total, m: steps.append(step) if task_ == task else None)
    assert steps[0] == 2 and steps[-1] == teachers.get(name).config.steps
    assert resumed["sha256"] == straight["sha256"]
    assert signal.getsignal(signal.SIGINT) == handler  # the build gives Ctrl-C back as it found it


def test_tiny_dvae_loads_without_unpickling(monkeypatch):
    """The in-project d-VAE is a state dict: the target rebuilds dall_e.Encoder and loads it,
    with no full unpickling (torch.load is not called at all) and no warning; its tokens are
    those of the encoder the build trained."""
    import warnings

    import dall_e
    from safetensors.torch import load_file

    from mimbench.targets import build_target

    folder, _ = teachers.ensure("dvae-smoke")

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_pickle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = teachers.resolve_references({"weights": "teacher:dvae-smoke"})
        target = build_target("dvae", grid=(2, 2), **options)
    shape = teachers.get("dvae-smoke").config
    by_hand = dall_e.Encoder(n_hid=shape.n_hid, n_blk_per_group=shape.n_blk_per_group,
                             vocab_size=shape.vocab_size)
    by_hand.load_state_dict(load_file(folder / "encoder.safetensors"))
    x = torch.rand(3, 3, 16, 16)
    expected = by_hand.eval()(0.8 * x + 0.1).argmax(1).flatten(1)  # DALL-E's map_pixels
    assert torch.equal(target(x), expected)


def test_old_pickled_cache_is_rebuilt():
    """A cache folder from before the safetensors format (encoder.pkl only) is rebuilt."""
    folder, report = teachers.ensure("dvae-smoke")
    (folder / "encoder.safetensors").rename(folder / "encoder.pkl")
    rebuilt, new_report = teachers.ensure("dvae-smoke")
    assert rebuilt == folder and (folder / "encoder.safetensors").exists()
    assert new_report["sha256"] == report["sha256"]


def test_config_change_gives_a_new_cache_entry():
    import dataclasses

    teacher = teachers.get("clip-smoke")
    other = dataclasses.replace(teacher, config=dataclasses.replace(teacher.config, steps=5))
    assert teachers.folder_for(other) != teachers.folder_for(teacher)
    newer = dataclasses.replace(teacher, version=teacher.version + 1)  # the build's code changed
    assert teachers.folder_for(newer) != teachers.folder_for(teacher)


def test_a_tokenizer_is_rebuilt_when_the_teacher_it_was_built_from_changes():
    """vqkd-smoke's cache key holds clip-smoke's weights' SHA-256: another clip-smoke build
    (here: its weights file replaced) gives vqkd-smoke another folder, so a tokenizer is never
    reused with a teacher it was not built from."""
    clip_folder, _ = teachers.ensure("clip-smoke")
    vqkd_folder, report = teachers.ensure("vqkd-smoke")
    assert report["built_from"] == {"clip-smoke": teachers.sha256(clip_folder / "open_clip_model.safetensors")}
    assert teachers.cached("vqkd-smoke")
    report_path = clip_folder / "report.json"
    clip_report = json.loads(report_path.read_text())
    report_path.write_text(json.dumps({**clip_report, "sha256": "0" * 64}))  # as after a rebuild
    (clip_folder / "open_clip_model.safetensors").write_bytes(b"other weights")
    assert not teachers.cached("clip-smoke") and not teachers.cached("vqkd-smoke")
    assert teachers.folder_for(teachers.get("vqkd-smoke")) is None  # unknown until clip is rebuilt


def test_concurrent_builders_share_one_build(tmp_path):
    code = ("from mimbench import teachers; f, r = teachers.ensure('dvae-smoke'); "
            "print(f, r['sha256'])")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
    assert outputs[0] == outputs[1]
    folder = outputs[0].split()[0]
    built = [p for p in (teachers.cache_dir() / "teachers").glob("dvae-smoke-*") if p.is_dir()]
    assert len(built) == 1
    assert not list((teachers.cache_dir() / "teachers").glob(".dvae-smoke-*"))  # no leftovers
    assert json.loads((built[0] / "report.json").read_text())["sha256"] == outputs[0].split()[1]
    assert str(built[0]) == folder


def test_captions_name_the_shape_with_the_configured_probability():
    """name=p: each object's shape word appears with probability p (binomial, 1,200+ objects),
    otherwise the caption says 'object'; the other attributes are drawn as before."""
    import numpy as np

    from mimbench.data.world import SHAPES, World, describe

    world = World("teacher", length=1000, image_size=32, cache=False)
    objects = [world.scene(i).objects for i in range(1000)]
    for p in (0.0, 0.25, 1.0):
        rng = np.random.default_rng(0)
        phrases = [phrase for objs in objects for phrase in describe(objs, 0.5, rng, p).split(" and ")]
        named = np.mean([any(f" {shape}" in phrase for shape in SHAPES) for phrase in phrases])
        assert len(phrases) >= 1000 and abs(named - p) < 4 * np.sqrt(p * (1 - p) / len(phrases)) + 1e-9
        assert all(" object" in phrase for phrase in phrases if not any(s in phrase for s in SHAPES))


def test_teacher_options_give_a_build_of_their_own(cli, tmp_path):
    """'clip-smoke?name_probability=0' is the smoke CLIP trained on captions that never name the
    shape: its own cache entry and weights, usable as a run's target.model; a mistyped option
    gets one sentence."""
    plain = teachers.ensure("clip-smoke")[1]
    unnamed = teachers.ensure("clip-smoke?name_probability=0")[1]
    assert unnamed["config"]["name_probability"] == 0 and unnamed["sha256"] != plain["sha256"]
    env = {"MIMBENCH_HOME": str(teachers.cache_dir())}
    run = cli("run", "--preset", "smoke", "--target", "clip", "--set",
              "target.model=teacher:clip-smoke?name_probability=0", "--set", "run.evals=[linear]",
              "--out", tmp_path / "run", env=env)
    assert run.returncode == 0, run.stderr
    used = json.loads((tmp_path / "run" / "results.json").read_text())["target"]["teachers"]
    assert used == {"teacher:clip-smoke?name_probability=0": {
        "folder": str(teachers.folder_for(teachers.get("clip-smoke?name_probability=0"))),
        "sha256": unnamed["sha256"]}}
    bad = cli("teachers", "build", "clip-smoke?name_probabilty=0", env=env)
    assert bad.returncode == 2 and "did you mean 'name_probability'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_unknown_teacher():
    from mimbench.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean 'clip'"):
        teachers.get("clipp")


@pytest.mark.slow
def test_full_teachers_are_worth_learning_from():
    """The tiny teachers the default preset uses. Thresholds: the CLIP teacher retrieves the right
    caption among 1,000 far above chance (0.1 %) and names the shape zero-shot well above chance
    (12.5 %); its features beat a random tower and raw pixels on the linear probe by 10+ points.
    The d-VAE reconstructs at under half the error of the mean image and uses a quarter or more
    of its codes. (Measured at build: CLIP retrieval .55, zero-shot .79, probe .51 vs .23 / .17;
    d-VAE recon .0142 vs mean image .0534, 250 of 512 codes used, perplexity 90.)"""
    _, clip = teachers.ensure("clip")
    assert clip["retrieval_top1"] > 0.2 and clip["zero_shot_shape_acc"] > 0.5
    assert clip["linear_probe_teacher"] > clip["linear_probe_random_tower"] + 0.1
    assert clip["linear_probe_teacher"] > clip["linear_probe_pixels"] + 0.1
    _, dvae = teachers.ensure("dvae")
    assert dvae["recon_mse"] < 0.5 * dvae["mean_image_mse"]
    assert dvae["code_fraction_used"] > 0.25
    # VQ-KD: its codes carry the CLIP features (cosine well above the mean feature's; built:
    # .908 vs .587) and the codebook has not collapsed (an eighth of it or more in use, spread
    # over more than 20 effective codes; built: 137 of 512, perplexity 63)
    _, vqkd = teachers.ensure("vqkd")
    assert vqkd["recon_cosine"] > vqkd["mean_feature_cosine"] + 0.15
    assert vqkd["codes_used"] >= vqkd["codebook_size"] // 8 and vqkd["perplexity"] > 20


def test_references_are_a_targets_options_and_those_of_the_targets_nested_in_them():
    """The multi target's teachers are {name: ...} entries with options of their own; a text
    that merely starts with 'teacher:' elsewhere (a plugin's prompt list) is no reference."""
    options = {"model": "teacher:clip", "prompts": ["teacher: a photo of"], "note": "a text",
               "teachers": ({"name": "clip", "model": "teacher:clip?seed=2", "layer": 2}, "pixels")}
    assert teachers.references(options) == ["teacher:clip", "teacher:clip?seed=2"]
    changed = teachers.with_references_changed(options, lambda name: name.upper())
    assert changed == {"model": "teacher:CLIP", "prompts": ["teacher: a photo of"], "note": "a text",
                       "teachers": ({"name": "clip", "model": "teacher:CLIP?SEED=2", "layer": 2}, "pixels")}
    assert options["model"] == "teacher:clip"  # the given options are left as they were
