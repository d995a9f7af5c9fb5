"""RetinaNet: config checks, shapes, flatten order, prior init, normalisation inside, weights, export, overfit."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec
from retinaedge.train.losses import RetinaNetLoss
from retinaedge.train.model import FPN, ModelConfig, ResNetBody, RetinaNet, RetinaNetHead, build_model

SPEC = DetectorSpec(class_names=("a", "b", "c"), input_height=64, input_width=64,
                    anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0)))
TINY = ModelConfig(backbone="resnet18", fpn_channels=8, head_channels=8, head_depth=2, head_norm="gn", gn_groups=4,
                   freeze_bn=False)


@pytest.fixture(autouse=True)
def _one_thread_and_seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


def _images(b: int = 2, size: int = 64) -> Tensor:
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_output_shapes_and_dtypes() -> None:
    model = build_model(SPEC, TINY)
    out = model(_images())
    assert set(out) == {"cls_logits", "box_deltas"}
    assert out["cls_logits"].shape == (2, (8 * 8 + 4 * 4) * 9, 3) == (2, SPEC.num_anchors, SPEC.num_classes)
    assert out["box_deltas"].shape == (2, SPEC.num_anchors, 4)
    assert out["cls_logits"].dtype == torch.float32


def test_five_levels_p6_from_c5_or_p5() -> None:
    spec = DetectorSpec(class_names=("a",), input_height=128, input_width=128)
    for p6 in ("c5", "p5"):
        cfg = ModelConfig(backbone="resnet18", fpn_channels=8, head_channels=8, head_depth=1, freeze_bn=False,
                          p6_from=p6)
        model = build_model(spec, cfg).eval()
        with torch.no_grad():
            feats = model.fpn(model.backbone(torch.zeros(1, 3, 128, 128)))
        assert [tuple(f.shape[-2:]) for f in feats] == spec.feature_shapes()
        assert model.fpn.extra[0].in_channels == (512 if p6 == "c5" else 8)
        assert model(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))["cls_logits"].shape == (1, spec.num_anchors, 1)


@pytest.mark.parametrize(("strides", "p6_from"), [((8, 16), "p5"), ((8, 16, 32, 64, 128), "c5"), ((64, 128), "c5")])
def test_every_trainable_parameter_gets_a_gradient(strides: tuple[int, ...], p6_from: str) -> None:
    # an unused parameter breaks DistributedDataParallel; the FPN builds only the convs its levels need
    spec = DetectorSpec(class_names=("a",), input_height=128, input_width=128,
                        anchors=AnchorSpec(strides=strides, sizes=tuple(2.0 * s for s in strides)))
    cfg = ModelConfig(backbone="resnet18", fpn_channels=8, head_channels=8, head_depth=1, freeze_bn=False,
                      p6_from=p6_from)  # type: ignore[arg-type]
    model = build_model(spec, cfg)
    out = model(torch.zeros(1, 3, 128, 128))
    assert out["cls_logits"].shape == (1, spec.num_anchors, 1)
    (out["cls_logits"].sum() + out["box_deltas"].sum()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


class _ZeroBody(nn.Module):
    out_channels = (4, 4, 4)

    def forward(self, x: Tensor) -> list[Tensor]:
        b, _, h, w = x.shape
        return [x.new_zeros(b, 4, h // s, w // s) for s in (8, 16, 32)]


class _PassFPN(nn.Module):
    out_channels = 4

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        return feats[:2]  # P3, P4 for SPEC's strides (8, 16)


class _PositionHead(nn.Module):
    """Outputs whose values encode (level, y, x, anchor a, component) in the channel layout a * D + d."""

    def __init__(self, a: int, k: int) -> None:
        super().__init__()
        self.a, self.k = a, k

    @staticmethod
    def code(level: Tensor | int, y: Tensor | int, x: Tensor | int, a: Tensor | int, d: Tensor | int) -> Tensor:
        return torch.as_tensor(level * 1_000_000 + y * 10_000 + x * 100 + a * 10 + d, dtype=torch.float32)

    def _maps(self, feats: list[Tensor], depth: int) -> list[Tensor]:
        out = []
        for lvl, f in enumerate(feats):
            b, _, h, w = f.shape
            a = torch.arange(self.a).view(-1, 1, 1, 1)
            d = torch.arange(depth).view(1, -1, 1, 1)
            y = torch.arange(h).view(1, 1, -1, 1)
            x = torch.arange(w).view(1, 1, 1, -1)
            m = self.code(lvl, y, x, a, d).reshape(self.a * depth, h, w)  # channel = a * depth + d
            out.append(m.expand(b, -1, -1, -1))
        return out

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self._maps(feats, self.k), self._maps(feats, 4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_flatten_order_matches_spec_anchor_order(channels_last: bool) -> None:
    cfg = ModelConfig(backbone="resnet18", freeze_bn=False, channels_last=channels_last)
    head = _PositionHead(SPEC.num_anchors_per_cell, SPEC.num_classes)
    model = RetinaNet(spec=SPEC, config=cfg, backbone=_ZeroBody(), fpn=_PassFPN(), head=head)
    out = model(_images(2))
    anchors = SPEC.anchors_xyxy()
    rows = [0, 1, 8, 9, 10, 9 * 8, 9 * 8 + 4, 9 * 63 + 8, 9 * 64, 9 * 64 + 5, 9 * 65 + 2, SPEC.num_anchors - 1]
    for i in rows:
        lvl = 0 if i < 9 * 64 else 1
        j = i - (0 if lvl == 0 else 9 * 64)
        stride = SPEC.anchors.strides[lvl]
        w = SPEC.input_width // stride
        cell, a = divmod(j, 9)
        y, x = divmod(cell, w)
        # the spec's anchor i really is cell (y, x), anchor a of this level
        centre = (anchors[i, :2] + anchors[i, 2:]) / 2
        np.testing.assert_allclose(centre, [(x + 0.5) * stride, (y + 0.5) * stride], atol=1e-4)
        np.testing.assert_allclose(anchors[i] - np.tile(centre, 2), SPEC.cell_anchors(lvl)[a], atol=1e-4)
        for b in range(2):
            torch.testing.assert_close(out["cls_logits"][b, i], head.code(lvl, y, x, a, torch.arange(3)))
            torch.testing.assert_close(out["box_deltas"][b, i], head.code(lvl, y, x, a, torch.arange(4)))


def test_prior_init_gives_initial_probability_pi() -> None:
    cfg = ModelConfig(backbone="resnet18", fpn_channels=16, head_channels=16, freeze_bn=False, prior_prob=0.01)
    model = build_model(SPEC, cfg).eval()
    assert model.head.cls_logits.bias.detach().allclose(torch.full((27,), -math.log(99.0)))
    for m in model.head.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.std().item() == pytest.approx(0.01, rel=0.2)
    with torch.no_grad():
        p = torch.sigmoid(model(_images(2))["cls_logits"])
    assert p.mean().item() == pytest.approx(0.01, rel=0.05)
    assert (p - 0.01).abs().max().item() < 0.005


def test_normalisation_happens_inside_forward() -> None:
    seen: list[Tensor] = []

    class Spy(_ZeroBody):
        def forward(self, x: Tensor) -> list[Tensor]:
            seen.append(x.detach().clone())
            return super().forward(x)

    head = _PositionHead(9, 3)
    model = RetinaNet(spec=SPEC, config=TINY, backbone=Spy(), fpn=_PassFPN(), head=head)
    img = _images(1)
    model(img)
    mean = torch.tensor(SPEC.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(SPEC.pixel_std).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (img.float() - mean) / std)
    assert "pixel_mean" not in model.state_dict()  # derived from the spec, not a weight


def test_uint8_float_and_memory_format_agree() -> None:
    model = build_model(SPEC, TINY).eval()
    plain = RetinaNet(spec=SPEC, config=ModelConfig(**{**TINY.__dict__, "channels_last": False})).eval()
    plain.load_state_dict(model.state_dict())
    img = _images(2)
    with torch.no_grad():
        a, b, c = model(img), model(img.float()), plain(img)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
        torch.testing.assert_close(a[k], c[k], atol=1e-5, rtol=1e-4)


def test_frozen_bn_and_trainable_layers() -> None:
    body = ResNetBody(arch="resnet18", freeze_bn=True, trainable_layers=3)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    with pytest.warns(UserWarning, match="freeze_bn=True without backbone_weights"):
        build_model(SPEC, ModelConfig(backbone="resnet18", fpn_channels=8, head_channels=8, head_depth=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model(SPEC, TINY)


def test_backbone_weights_from_local_file(tmp_path) -> None:
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    model = build_model(SPEC, ModelConfig(**{**TINY.__dict__, "backbone_weights": str(path), "freeze_bn": True}))
    torch.testing.assert_close(model.backbone.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    torch.testing.assert_close(model.backbone.bn1.running_var, ref.bn1.running_var)
    with pytest.raises(ModelError, match=r"backbone_weights='.*missing.pth' does not exist"):
        ResNetBody(arch="resnet18", weights=tmp_path / "missing.pth")
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ModelError, match="does not fit torchvision resnet18") as e:
        ResNetBody(arch="resnet18", weights=tmp_path / "r50.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a loadable torch file") as e:
        ResNetBody(arch="resnet18", weights=tmp_path / "junk.pth")
    assert "\n" not in str(e.value)


def test_config_and_spec_errors_name_the_value() -> None:
    with pytest.raises(InputError, match=r"model.backbone='resnet101'.*'resnet18'"):
        ModelConfig(backbone="resnet101")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"head_norm='ln'"):
        ModelConfig(head_norm="ln")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"gn_groups=32 does not divide head_channels=48"):
        ModelConfig(head_channels=48, head_norm="gn")
    with pytest.raises(InputError, match=r"prior_prob=1.0"):
        ModelConfig(prior_prob=1.0)
    odd = DetectorSpec(class_names=("a",), input_height=48, input_width=64,
                       anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0)))
    with pytest.raises(InputError, match="input_height=48 must be a multiple of 32"):
        build_model(odd, TINY)
    with pytest.raises(InputError, match=r"FPN levels=\(2, 3\)"):
        FPN(in_channels=(8, 8, 8), out_channels=8, levels=(2, 3))


def test_head_structure() -> None:
    head = RetinaNetHead(in_channels=8, num_anchors=9, num_classes=3, channels=16, depth=3, norm="bn")
    convs = [m for m in head.cls_tower if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 and all(c.bias is None for c in convs)  # norm follows: bias is redundant
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.box_tower) == 3
    assert head.cls_logits.out_channels == 27 and head.box_deltas.out_channels == 36


@pytest.mark.parametrize("dynamo", [False, True])
def test_exports_to_onnx_with_dynamic_batch(dynamo: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = build_model(SPEC, TINY).eval()
    img = _images(2)
    kwargs = ({"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamo
              else {"dynamic_axes": {"images": {0: "batch"}}, "opset_version": 17})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            onnx_bytes = torch.onnx.export(model, (img,), dynamo=True, input_names=["images"],
                                           output_names=["cls_logits", "box_deltas"], verbose=False,
                                           **kwargs).model_proto.SerializeToString()
        else:
            f = io.BytesIO()
            torch.onnx.export(model, (img,), f, dynamo=False, input_names=["images"],
                              output_names=["cls_logits", "box_deltas"], **kwargs)
            onnx_bytes = f.getvalue()
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(img)
    for b in (1, 2):
        cls, box = sess.run(["cls_logits", "box_deltas"], {"images": img[:b].numpy()})
        np.testing.assert_allclose(cls, ref["cls_logits"][:b].numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(box, ref["box_deltas"][:b].numpy(), atol=1e-4, rtol=1e-4)


def test_tiny_model_overfits_one_batch() -> None:
    cfg = ModelConfig(backbone="resnet18", fpn_channels=16, head_channels=16, head_depth=2, head_norm="gn",
                      gn_groups=4, freeze_bn=False)
    model = build_model(SPEC, cfg)
    loss_fn = RetinaNetLoss(spec=SPEC)
    images = _images(2)
    targets = {"boxes": torch.tensor([[[4.0, 4.0, 20.0, 20.0], [30.0, 10.0, 62.0, 40.0]],
                                      [[10.0, 35.0, 22.0, 60.0], [0.0, 0.0, 0.0, 0.0]]]),
               "labels": torch.tensor([[0, 2], [1, -1]])}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = last = float("nan")
    for step in range(40):
        loss = loss_fn(model(images), targets)
        assert loss["num_pos"].item() > 0
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        last = loss["loss"].item()
        if step == 0:
            first = last
        elif last <= first / 10:
            break
    assert last <= first / 10, f"loss fell only from {first:.4f} to {last:.4f} in {step + 1} steps"
