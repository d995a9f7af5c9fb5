"""train/checkpoint.py: atomic weights-only checkpoints, exact RNG capture, one-line load errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from retinaedge.runtime.errors import ModelError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.checkpoint import (
    check_state_dict,
    get_rng_state,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from retinaedge.train.config import TrainConfig, config_to_dict, load_config
from retinaedge.train.model import build_model

TINY = ["model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1", "model.gn_groups=4",
        "model.channels_last=false", "data.input_size=64", "anchors.strides=[8, 16]", "anchors.sizes=[12, 24]",
        "data.progressive_size=0"]


@pytest.fixture(scope="module")
def parts() -> tuple[torch.nn.Module, DetectorSpec, TrainConfig]:
    torch.manual_seed(0)
    config = load_config("edge", TINY)
    spec = DetectorSpec(class_names=("a", "b"), category_ids=(3, 8), input_height=64, input_width=64,
                        anchors=AnchorSpec(strides=(8, 16), sizes=(12.0, 24.0)))
    return build_model(spec, config.model), spec, config


def _payload(model: torch.nn.Module, spec: DetectorSpec, config: TrainConfig) -> dict:
    return {"model": model.state_dict(), "config": config_to_dict(config), "spec": spec.to_dict(), "epoch": 1,
            "step": 10, "batch": 0, "elapsed_s": 1.5, "best_ap": 0.25, "rng": get_rng_state(),
            "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9).state_dict(), "scaler": {}}


def test_round_trip_loads_weights_only(parts, tmp_path: Path) -> None:
    model, spec, config = parts
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _payload(model, spec, config))
    raw = torch.load(path, weights_only=True)  # plain torch, no retinaedge code involved
    assert raw["format"] == "retinaedge-ckpt" and raw["step"] == 10
    loaded, spec2, config2 = load_checkpoint(path)
    assert spec2 == spec and config2 == config
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not list(tmp_path.glob(".*tmp"))


def test_write_is_atomic(parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, spec, config = parts
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _payload(model, spec, config))
    before = path.read_bytes()

    def dies_midway(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _payload(model, spec, config))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_load_errors_are_one_line(parts, tmp_path: Path) -> None:
    model, spec, config = parts
    good = tmp_path / "good.pt"
    save_checkpoint(good, _payload(model, spec, config))

    cases = {}
    cases["missing"] = (tmp_path / "nope.pt", "does not exist")
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = (trunc, "corrupt or truncated")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a zip at all" * 10)
    cases["junk"] = (junk, "corrupt or truncated")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    cases["foreign"] = (foreign, "is not a retinaedge checkpoint")
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "retinaedge-ckpt", "obj": Path("x")}, pickled)  # an arbitrary class: refused
    cases["pickled"] = (pickled, "holds more than tensors and plain types")
    for name, (path, pattern) in cases.items():
        with pytest.raises(ModelError, match=pattern) as info:
            read_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), name


def test_architecture_mismatch_names_keys_and_shapes(parts, tmp_path: Path) -> None:
    model, spec, config = parts
    payload = _payload(model, spec, config)
    wider = load_config("edge", [*TINY, "model.head_channels=16"])
    payload["config"] = config_to_dict(wider)  # config says 16-wide heads, weights are 8-wide
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, payload)
    with pytest.raises(ModelError, match=r"shape mismatches \[head\.cls_tower\.0\.weight: checkpoint \(8, 8, 3, 3\) "
                                         r"vs model \(16, 8, 3, 3\)") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)

    state = dict(model.state_dict())
    state.pop("head.box_deltas.bias")
    state["extra.weight"] = torch.zeros(1)
    pattern = r"missing keys \['head\.box_deltas\.bias'\].*unexpected keys \['extra\.weight'\]"
    with pytest.raises(ModelError, match=pattern):
        check_state_dict(model, state, source="test")
