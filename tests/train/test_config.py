"""train/config.py: presets, ``--set`` overrides parsed by field type, one-line errors, dict round trip, spec."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import tomllib

from retinaedge.runtime.errors import InputError, SpecError
from retinaedge.runtime.spec import AnchorSpec, PostProcess
from retinaedge.train.config import (
    PRESET_DIR,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    make_spec,
    preset_names,
)


def test_presets_are_packaged_and_load() -> None:
    assert {"edge", "r50-fpn"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        # every key in the file reached the config (a typo in a preset would have raised)
        raw = tomllib.loads((PRESET_DIR / f"{name}.toml").read_text())
        assert config_to_dict(cfg)["epochs"] == raw["epochs"]


def test_r50_fpn_is_the_paper() -> None:
    c = load_config("r50-fpn")
    m = c.model
    assert (m.backbone, m.head_channels, m.head_depth, m.fpn_channels) == ("resnet50", 256, 4, 256)
    assert c.model.prior_prob == 0.01 and (c.loss.alpha, c.loss.gamma) == (0.25, 2.0)
    assert (c.loss.fg_iou, c.loss.bg_iou) == (0.5, 0.4)
    assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == ("sgd", 0.01, 0.9, 1e-4)
    assert c.optim.schedule == "step" and c.optim.warmup_iters > 0 and c.amp
    assert 640 <= c.data.input_size[0] <= 800 and c.data.input_size[0] % 128 == 0
    assert c.anchors.strides == (8, 16, 32, 64, 128)


def test_overrides_are_parsed_by_field_type() -> None:
    c = load_config("edge", [
        "optim.lr=3e-4",               # float
        "optim.warmup_iters=7",        # int
        "loss.allow_low_quality=false",  # bool
        "model.backbone=resnet34",     # bare word -> Literal
        'optim.name="sgd"',            # quoted string
        "data.input_size=[128, 256]", "data.progressive_size=0",  # list -> tuple
        "anchors.sizes=[8, 16, 32, 64, 128]",  # ints -> floats
        "model.backbone_weights=none",  # None
        "time_budget_min=2",           # int -> float
        "data.augment.hflip=0.0",      # nested dataclass of another module
    ])
    assert c.optim.lr == 3e-4 and c.optim.warmup_iters == 7 and c.loss.allow_low_quality is False
    assert c.model.backbone == "resnet34" and c.optim.name == "sgd"
    assert c.data.input_size == (128, 256)
    assert c.anchors.sizes == (8.0, 16.0, 32.0, 64.0, 128.0) and all(isinstance(s, float) for s in c.anchors.sizes)
    assert c.model.backbone_weights is None
    assert c.time_budget_min == 2.0 and isinstance(c.time_budget_min, float)
    assert c.data.augment.hflip == 0.0
    assert load_config("edge", ["data.input_size=192"]).data.input_size == (192, 192)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("optim.foo=1", r"unknown config key 'optim\.foo'.*allowed: \['name', 'lr'"),
        ("x=1", r"unknown config key 'x'.*allowed: \['model', 'data'"),
        ("optim.lr.x=1", r"optim\.lr is a value, not a table"),
        ("optim.lr=abc", r"optim\.lr='abc' must be a number"),
        ("epochs=1.5", r"epochs=1\.5 must be an integer"),
        ("amp=1", r"amp=1 must be true or false"),
        ("model.backbone=resnet99", r"model\.backbone='resnet99' is not allowed; choose one of \['resnet18'"),
        ("optim.schedule=linear", r"choose one of \['cosine', 'step'\]"),
        ("data.input_size=[1, 2, 3]", r"data\.input_size=\[1, 2, 3\]"),
        ("optim.lr=-1", r"optim\.lr=-1\.0 must be a finite number > 0"),
        ("loss.alpha=2", r"loss\.alpha=2\.0 must be in \[0, 1\], or -1"),
        ("optim.milestones=[0.9, 0.5]", r"optim\.milestones=\(0\.9, 0\.5\) must be increasing"),
        ("noequals", r"'noequals' is not key=value"),
        ("data.progressive_size=256", r"data\.progressive_size=256 must be 0 \(off\) or below the input size"),
        ("data.progressive_fraction=1.5", r"data\.progressive_fraction=1\.5 must be in \[0, 1\]"),
    ],
)
def test_bad_overrides_are_one_line_errors(override: str, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern) as info:
        load_config("edge", [override])
    assert "\n" not in str(info.value)


def test_toml_file_and_its_errors(tmp_path: Path) -> None:
    p = tmp_path / "mine.toml"
    p.write_text('epochs = 3\n[model]\nbackbone = "resnet18"\n[optim]\nname = "adamw"\nlr = 5e-4\n')
    c = load_config(p, ["epochs=4"])
    assert (c.epochs, c.model.backbone, c.optim.name, c.optim.lr) == (4, "resnet18", "adamw", 5e-4)
    assert c.loss == TrainConfig().loss  # missing tables take the defaults
    with pytest.raises(InputError, match=r"'nope' is neither a preset nor a \.toml file; presets: \["):
        load_config("nope")
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[optim]\nlrr = 0.1\n")
    with pytest.raises(InputError, match=r"unknown config key \['lrr'\] in \[optim\]; allowed"):
        load_config(typo)


def test_dict_round_trip_is_exact() -> None:
    for name in preset_names():
        c = load_config(name, ["model.backbone_weights=/some/file.pth"])
        d = config_to_dict(c)
        assert config_from_dict(d) == c
        assert dataclasses.asdict(config_from_dict(d)) == d


def test_apply_overrides_creates_missing_tables() -> None:
    d = apply_overrides({}, ["optim.lr=0.5", "loss.gamma=0"])
    assert d == {"optim": {"lr": 0.5}, "loss": {"gamma": 0}}
    assert config_from_dict(d).loss.gamma == 0.0


def test_make_spec_applies_input_size_and_overrides() -> None:
    c = load_config("edge", [
        "data.input_size=[128, 256]", "data.progressive_size=0", "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]",
        "postprocess.score_threshold=0.2", "postprocess.max_detections=7",
    ])
    spec = make_spec(c, ["a", "b"], [4, 9])
    assert (spec.input_height, spec.input_width) == (128, 256)
    assert spec.anchors.strides == (8, 16) and spec.anchors.sizes == (12.0, 24.0)
    assert spec.anchors.scales == AnchorSpec().scales  # not overridden: the spec's default
    assert spec.postprocess.score_threshold == 0.2 and spec.postprocess.max_detections == 7
    assert spec.postprocess.iou_threshold == PostProcess().iou_threshold
    assert spec.class_names == ("a", "b") and spec.category_ids == (4, 9)
    with pytest.raises(SpecError, match="multiple of the largest stride"):
        make_spec(load_config("edge", ["data.input_size=200"]), ["a"], [1])
