import pytest
import yaml

from mimbench import config as cfg
from mimbench.errors import ConfigError


def test_defaults_are_the_tiny_preset_but_for_its_target_cache():
    tiny = {"target": {"name": "pixels", "cache": True}}  # the world's views are fixed
    assert cfg.resolve("tiny", target="pixels") == cfg.apply(cfg.Config(), tiny)
    assert cfg.Config().student.grid == (8, 8)


def test_preset_target_defaults_yield_to_the_user():
    c = cfg.resolve("tiny", target="clip")
    assert c.target.options["model"] == "teacher:clip" and c.target.loss == "mse"
    c = cfg.resolve("tiny", target="clip", overrides=("target.layer=3", "target.loss=cosine"))
    assert c.target.options["layer"] == 3 and c.target.loss == "cosine"
    assert cfg.resolve("tiny", target="pixels").target.options == {}


def test_paper_preset_is_beits_recipe():
    """BEiT ViT-B/16 pre-training as docs/protocols.md lists it."""
    c = cfg.resolve("paper", target="clip")
    s, m, o, d = c.student, c.mask, c.optim, c.data
    assert (s.img_size, s.patch_size, s.embed_dim, s.depth, s.num_heads) == (224, 16, 768, 12, 12)
    assert s.grid == (14, 14) and s.drop_path == 0.1 and s.layer_scale == 0.1
    assert s.extra["use_shared_rel_pos_bias"] is True
    assert (m.kind, m.count(s.grid), m.min_block, m.min_aspect) == ("block", 75, 16, 0.3)
    assert (o.effective_batch, o.lr, o.betas, o.weight_decay) == (2048, 1.5e-3, (0.9, 0.999), 0.05)
    assert (o.epochs, o.warmup_epochs, o.clip_grad, o.steps) == (300, 10, 3.0, None)
    assert d.crop_scale == (0.08, 1.0) and d.hflip and d.color_jitter == 0.4


def test_override_types_and_yaml_round_trip():
    c = cfg.resolve("smoke", target="pixels", overrides=(
        "optim.lr=3e-4", "optim.betas=[0.9, 0.95]", "mask.num_masked=10", "optim.clip_grad=null",
        "target.normalize=false"))
    assert c.optim.lr == 3e-4 and c.optim.betas == (0.9, 0.95) and c.mask.num_masked == 10
    assert c.optim.clip_grad is None
    assert c.target.options == {"normalize": False}
    assert cfg.from_dict(cfg.to_dict(c)) == c
    assert cfg.diff(c, cfg.resolve("smoke", target="pixels"))["optim.lr"] == 3e-4


def test_changing_the_target_name_drops_the_old_targets_options():
    c = cfg.resolve("smoke", target="pixels", overrides=("target.normalize=false",))
    c = cfg.apply(c, {"target": {"name": "clip"}})
    assert c.target.options == {}


@pytest.mark.parametrize("override, message", [
    ("optim.lr", "section.key=value"),
    ("optim.betas=[1]", "list of 2"),
    ("run.seed=true", "integer"),
    ("data.hflip=1", "true or false"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        cfg.resolve("smoke", target="pixels", overrides=(override,))


def test_a_config_files_target_keys_outrank_the_presets_target_defaults(tmp_path):
    """--target clip with a file that sets target.layer: the file's layer, not the preset's."""
    path = tmp_path / "run.yaml"
    path.write_text("target:\n  layer: 3\n  loss: cosine\n")
    config = cfg.resolve("tiny", config_file=path, target="clip")
    assert config.target.options["layer"] == 3 and config.target.loss == "cosine"
    assert config.target.options["model"] == "teacher:clip"  # the defaults the file left alone
    path.write_text("target:\n  name: timm\n  layer: 3\n")  # another target's keys: refused, not dropped
    with pytest.raises(ConfigError, match="target section is for 'timm' \\(with layer\\)"):
        cfg.resolve("tiny", config_file=path, target="clip")


def resolved(tmp_path, preset="tiny", file=None, target=None, sets=()):
    path = None
    if file is not None:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(file))
    return cfg.resolve(preset, config_file=path, target=target, overrides=sets)


# One case per pair of stages in the chain defaults -> preset (with its per-target defaults) ->
# --config file -> --target -> --set: both stages set the same key, the later one wins.
PAIRS = {
    "defaults<preset": (dict(preset="smoke"), lambda c: c.optim.steps, 6),
    "defaults<file": (dict(file={"optim": {"steps": 7}}), lambda c: c.optim.steps, 7),
    "defaults<target": (dict(target="dvae"), lambda c: c.target.name, "dvae"),
    "defaults<set": (dict(sets=("optim.steps=9",)), lambda c: c.optim.steps, 9),
    "preset<file": (dict(preset="smoke", file={"optim": {"steps": 7}}), lambda c: c.optim.steps, 7),
    "preset target default<file": (dict(file={"target": {"name": "clip", "layer": 3}}),
                                   lambda c: c.target.options["layer"], 3),
    "preset target default<target": (dict(preset="smoke", target="dvae"),  # smoke's dvae weights, not clip's model
                                     lambda c: c.target.options, {"weights": "teacher:dvae-smoke"}),
    "preset<set": (dict(preset="smoke", sets=("optim.steps=9",)), lambda c: c.optim.steps, 9),
    "preset target default<set": (dict(target="clip", sets=("target.layer=3",)),
                                  lambda c: c.target.options["layer"], 3),
    "file<target": (dict(file={"target": {"name": "pixels"}}, target="clip"),  # the name alone
                    lambda c: (c.target.name, c.target.options["layer"]), ("clip", 2)),
    "file<set": (dict(file={"optim": {"steps": 7}}, sets=("optim.steps=9",)), lambda c: c.optim.steps, 9),
    "target<set": (dict(target="clip", sets=("target.name=dvae",)),  # and dvae gets its preset defaults
                   lambda c: (c.target.name, c.target.options), ("dvae", {"weights": "teacher:dvae"})),
}


@pytest.mark.parametrize("pair", PAIRS)
def test_each_stage_of_the_chain_outranks_the_ones_before(tmp_path, pair):
    stages, value_of, expected = PAIRS[pair]
    assert value_of(resolved(tmp_path, **stages)) == expected
    assert cfg.Config().optim.steps not in (6, 7, 9) and cfg.Config().target.name != "dvae"


def test_target_options_are_converted_by_their_annotations():
    """dvae's grid is annotated tuple[int, int]: a YAML list arrives as a tuple; a string for
    clip's int layer is refused naming the type."""
    config = cfg.resolve("smoke", target="dvae", overrides=("target.grid=[4, 4]",))
    assert config.target.options["grid"] == (4, 4)
    with pytest.raises(ConfigError, match="'target.layer' must be an integer, not 'abc'"):
        cfg.resolve("smoke", target="clip", overrides=("target.layer=abc",))


def test_a_saved_config_remembers_its_preset():
    """--resume and eval --checkpoint read config.yaml: the preset (whose published references
    the evaluations report) travels with it instead of falling back to tiny."""
    config = cfg.resolve("paper", target="clip")
    assert cfg.from_dict(cfg.to_dict(config)).run.preset == "paper"
    assert cfg.resolve("smoke").run.preset == "smoke"


def test_mae_style_masks_75_percent_at_random_unless_the_user_chose(tmp_path):
    c = cfg.resolve("tiny", target="pixels")
    assert (c.student.style, c.mask.kind, c.mask.ratio) == ("beit", "block", 0.45)
    c = cfg.resolve("tiny", target="pixels", overrides=("student.style=mae",))
    assert (c.mask.kind, c.mask.ratio, c.mask.count(c.student.grid)) == ("random", 0.75, 48)
    c = cfg.resolve("tiny", target="pixels", overrides=("student.style=mae", "mask.kind=block"))
    assert (c.mask.kind, c.mask.ratio) == ("block", 0.75)
    (tmp_path / "mine.yaml").write_text("student: {style: mae}\nmask: {ratio: 0.6}\n")
    c = cfg.resolve("tiny", config_file=tmp_path / "mine.yaml", target="pixels")
    assert (c.mask.kind, c.mask.ratio) == ("random", 0.6)
    paper = cfg.resolve("paper", target="pixels", overrides=(
        "student.style=mae", "student.model=vit_base_patch16_224", "student.extra={}"))
    assert paper.mask.num_masked is None and paper.mask.count(paper.student.grid) == 147  # of 196
    s = paper.student
    assert (s.decoder_depth, s.decoder_dim, s.decoder_heads) == (8, 512, 16)  # MAE's decoder
