"""`OrtRunner` on tiny real ONNX graphs built here with onnx.helper (no dependency on the export stage).

The graph: uint8 images -> Cast -> /255 -> per level AveragePool(stride) -> 1x1 Conv -> (B, HW, C) ->
Concat -> ``cls_logits`` (B, 80, 3) and clamped ``box_deltas`` (B, 80, 4) -> EfficientNMS_TRT with a
constant anchors input, as ``retinaedge export --nms efficient`` lays it out.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from retinaedge.runtime.detections import Detections
from retinaedge.runtime.errors import InputError, MissingDependencyError, ModelError
from retinaedge.runtime.nms import efficient_nms
from retinaedge.runtime.ort_runner import OrtRunner
from retinaedge.runtime.postprocess import to_detections
from retinaedge.runtime.preprocess import preprocess_batch
from retinaedge.runtime.runner import Detector
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

C = 3
ATTRS = dict(score_threshold=0.05, iou_threshold=0.5, max_output_boxes=10, background_class=-1,
             score_activation=1, class_agnostic=0, box_coding=1)


def make_spec(**kw) -> DetectorSpec:
    base = dict(class_names=("a", "b", "c"), input_height=64, input_width=64,
                anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)),
                postprocess=PostProcess(score_threshold=0.05, max_detections=10))
    base.update(kw)
    return DetectorSpec(**base)


def weights(seed=0):
    """Class c fires where colour channel c is bright (logit 8x - 4), boxes get small random deltas."""
    rng = np.random.default_rng(seed)
    wc = (8 * np.eye(C, 3) + rng.normal(0, 0.3, (2, C, 3)))[..., None, None].astype(np.float32)
    return {
        "wc": wc, "bc": np.full((2, C), -4.0, np.float32),
        "wb": rng.normal(0, 0.5, (2, 4, 3, 1, 1)).astype(np.float32), "bb": np.zeros((2, 4), np.float32),
    }


def build_model(path, spec, *, nms="efficient", domain="", anchors="initializer", metadata=True,
                precision="fp32", input_type=TensorProto.UINT8, seed=0, write_spec_json=False, attrs=None):
    """Write the tiny detector to ``path``; ``nms``: "efficient" (plugin) or "none" (raw + decoded heads)."""
    w = weights(seed)
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op, inputs, output, **a):
        nodes.append(helper.make_node(op, inputs, [output], **a))
        return output

    x = node("Cast", ["images"], "x", to=TensorProto.FLOAT)
    x = node("Mul", [x, const("scale", np.array(1 / 255, np.float32))], "x01")
    cls, box = [], []
    for lvl, s in enumerate(spec.anchors.strides):
        p = node("AveragePool", [x], f"pool{lvl}", kernel_shape=[s, s], strides=[s, s])
        for kind, out, acc in (("c", C, cls), ("b", 4, box)):
            wk, bk = const(f"w{kind}{lvl}", w[f"w{kind}"][lvl]), const(f"b{kind}{lvl}", w[f"b{kind}"][lvl])
            y = node("Conv", [p, wk, bk], f"conv{kind}{lvl}")
            y = node("Reshape", [y, const(f"shape{kind}{lvl}", np.array([0, out, -1], np.int64))], f"flat{kind}{lvl}")
            acc.append(node("Transpose", [y], f"t{kind}{lvl}", perm=[0, 2, 1]))
    node("Concat", cls, "cls_logits", axis=1)
    node("Concat", box, "box_deltas_raw", axis=1)
    limit = np.array([np.inf, np.inf, spec.box_coding.clamp, spec.box_coding.clamp], np.float32)
    node("Min", ["box_deltas_raw", const("clamp", limit)], "box_deltas")
    n = spec.num_anchors
    b = "B"
    if nms == "efficient":
        a_value = spec.anchors_cxcywh()[None]
        if anchors == "initializer":
            a_name = const("anchors", a_value)
        elif anchors == "constant":
            a_name = node("Constant", [], "anchors", value=numpy_helper.from_array(a_value, "anchors_value"))
        else:  # computed in the graph: not a constant the runner can read
            a_name = node("Identity", [const("anchors_src", a_value)], "anchors")
        nodes.append(helper.make_node(
            "EfficientNMS_TRT", ["box_deltas", "cls_logits", a_name],
            ["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
            domain=domain, plugin_version="1", **(attrs or ATTRS)))
        k = (attrs or ATTRS)["max_output_boxes"]
        outputs = [helper.make_tensor_value_info("num_detections", TensorProto.INT32, [b, 1]),
                   helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [b, k, 4]),
                   helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [b, k]),
                   helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [b, k])]
    else:
        node("Sigmoid", ["cls_logits"], "scores")
        node("Identity", ["box_deltas"], "boxes")  # stands in for the decode; only names matter here
        outputs = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, [b, n, d])
                   for nm, d in (("cls_logits", C), ("box_deltas", 4), ("boxes", 4), ("scores", C))]
    if input_type != TensorProto.UINT8:
        nodes[0] = helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT)
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", input_type, [b, 3, 64, 64])], outputs, inits)
    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if metadata:
        for key, v in {"retinaedge.spec": spec.to_json(), "retinaedge.precision": precision,
                       "retinaedge.nms": nms, "retinaedge.target": "tensorrt"}.items():
            model.metadata_props.add(key=key, value=v)
    onnx.save(model, str(path))
    if write_spec_json:
        spec.save(path.parent / "spec.json")
    return path


def numpy_heads(batch, spec, seed=0):
    """The tiny graph's raw heads computed in numpy: the reference for the cut graph."""
    w = weights(seed)
    x = batch.astype(np.float32) * np.float32(1 / 255)
    cls, box = [], []
    for lvl, s in enumerate(spec.anchors.strides):
        b, _, h, wd = x.shape
        p = x.reshape(b, 3, h // s, s, wd // s, s).mean(axis=(3, 5))  # (B, 3, h, w)
        for kind, acc in (("c", cls), ("b", box)):
            y = np.einsum("oi,bihw->bohw", w[f"w{kind}"][lvl][:, :, 0, 0], p) + w[f"b{kind}"][lvl][None, :, None, None]
            acc.append(y.reshape(b, y.shape[1], -1).transpose(0, 2, 1))
    deltas = np.concatenate(box, 1)
    deltas[..., 2:] = np.minimum(deltas[..., 2:], spec.box_coding.clamp)
    return np.concatenate(cls, 1), deltas


def images(rng, n=2):
    """Dark images of different sizes with a few red / green / blue / yellow rectangles."""
    sizes = [(64, 64), (48, 80), (90, 40), (64, 64)]
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)
    out = []
    for h, w in sizes[:n]:
        im = rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
        for col in colours:
            y, x = rng.integers(0, h - 12), rng.integers(0, w - 12)
            im[y:y + rng.integers(10, 30), x:x + rng.integers(10, 30)] = col
        out.append(im)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ort")
    spec = make_spec()
    build_model(d / "model.fp32.onnx", spec)
    return d


def test_spec_and_precision_from_metadata_and_nothing_allocated_before_activate(model_dir):
    r = OrtRunner(path=model_dir / "model.fp32.onnx")
    assert r.spec == make_spec()
    assert r.precision == "fp32" and r.backend == "ort" and r.nms_mode == "efficient" and r.target == "tensorrt"
    assert r.name == "ort-fp32:model.fp32.onnx"
    assert r._session is None and not r.is_active
    assert r.plugin is not None and r.plugin.attrs["max_output_boxes"] == 10
    with pytest.raises(RuntimeError, match="not active"):
        r.infer(np.zeros((1, 3, 64, 64), np.uint8))


def test_emulated_plugin_equals_efficient_nms_on_the_raw_heads(model_dir, rng):
    spec = make_spec()
    batch, _ = preprocess_batch(images(rng, 3), spec)
    with OrtRunner(path=model_dir / "model.fp32.onnx", raw=True, threads=1) as raw_runner:
        raw = raw_runner.infer(batch)
    assert set(raw) == {"cls_logits", "box_deltas"}
    logits, deltas = numpy_heads(batch, spec)
    np.testing.assert_allclose(raw["cls_logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(raw["box_deltas"], deltas, rtol=1e-5, atol=1e-5)
    with OrtRunner(path=model_dir / "model.fp32.onnx", threads=1) as r:
        out = r.infer(batch)
    assert set(out) == {"num_detections", "detection_boxes", "detection_scores", "detection_classes"}
    expected = efficient_nms(raw["box_deltas"], raw["cls_logits"], spec.anchors_cxcywh()[None],
                             score_threshold=0.05, iou_threshold=0.5, max_output_boxes=10, background_class=-1,
                             score_activation=True, class_agnostic=False, box_coding=1)
    for name, e in zip(("num_detections", "detection_boxes", "detection_scores", "detection_classes"), expected,
                       strict=True):
        np.testing.assert_array_equal(out[name], e)
    assert out["num_detections"].dtype == np.int32 and out["num_detections"].min() > 0


def test_node_attributes_drive_the_emulation_not_the_spec(tmp_path, rng):
    spec = make_spec()  # says max_detections 10, per-class
    attrs = {**ATTRS, "max_output_boxes": 6, "class_agnostic": 1, "score_threshold": 0.2, "iou_threshold": 0.3}
    path = build_model(tmp_path / "m.onnx", spec, attrs=attrs)
    batch, _ = preprocess_batch(images(rng, 2), spec)
    with OrtRunner(path=path) as r:
        out = r.infer(batch)
    logits, deltas = numpy_heads(batch, spec)
    kw = dict(score_threshold=0.2, iou_threshold=0.3, max_output_boxes=6)
    expected = efficient_nms(deltas, logits, spec.anchors_cxcywh()[None], class_agnostic=True, **kw)
    per_class = efficient_nms(deltas, logits, spec.anchors_cxcywh()[None], class_agnostic=False, **kw)
    assert out["detection_boxes"].shape == (2, 6, 4)
    np.testing.assert_array_equal(out["detection_classes"], expected[3])
    np.testing.assert_allclose(out["detection_boxes"], expected[1], rtol=1e-5, atol=1e-4)
    assert not np.array_equal(expected[3], per_class[3])  # the attribute matters on these images


@pytest.mark.parametrize(("domain", "anchors"), [("trt.plugins", "initializer"), ("", "constant"),
                                                  ("", "computed")])
def test_plugin_domain_and_anchor_forms(tmp_path, rng, domain, anchors):
    spec = make_spec()
    path = build_model(tmp_path / "m.onnx", spec, domain=domain, anchors=anchors)
    batch, _ = preprocess_batch(images(rng, 2), spec)
    reference = build_model(tmp_path / "ref.onnx", spec)
    with OrtRunner(path=path) as r, OrtRunner(path=reference) as ref:
        out, expected = r.infer(batch), ref.infer(batch)
    for k, v in expected.items():
        np.testing.assert_array_equal(out[k], v)
    assert (r.plugin.anchors_value is None) == (anchors == "computed")


def test_no_spin_session_gives_the_same_detections(model_dir, rng):
    batch, _ = preprocess_batch(images(rng, 2), make_spec())
    with OrtRunner(path=model_dir / "model.fp32.onnx", threads=2) as r:
        ref = r.infer(batch)
    with OrtRunner(path=model_dir / "model.fp32.onnx", threads=2, spin=False) as r:
        out = r.infer(batch)
        options = r._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for k, v in ref.items():
        np.testing.assert_array_equal(out[k], v)


def test_detector_end_to_end_gives_original_pixel_detections(model_dir, rng):
    spec = make_spec()
    imgs = images(rng, 3)
    runner = OrtRunner(path=model_dir / "model.fp32.onnx")
    dets = Detector(runner=runner)(imgs)
    assert runner.is_active and len(dets) == 3
    batch, metas = preprocess_batch(imgs, spec)
    logits, deltas = numpy_heads(batch, spec)
    expected = to_detections({"cls_logits": logits, "box_deltas": deltas}, spec, metas)
    for d, e, im in zip(dets, expected, imgs, strict=True):
        assert isinstance(d, Detections) and len(d) == len(e) > 0
        np.testing.assert_allclose(d.boxes, e.boxes, atol=1e-3)
        np.testing.assert_allclose(d.scores, e.scores, atol=1e-5)
        h, w = im.shape[:2]
        assert d.boxes[:, 0::2].max() <= w and d.boxes[:, 1::2].max() <= h and d.boxes.min() >= 0
    runner.deactivate()
    assert runner._session is None


def test_identical_images_in_a_batch_give_identical_detections(model_dir, rng):
    img = images(rng, 1)[0]
    with OrtRunner(path=model_dir / "model.fp32.onnx") as r:
        out = r.infer(preprocess_batch([img] * 4, make_spec())[0])
    for v in out.values():
        for i in range(1, 4):
            np.testing.assert_array_equal(v[i], v[0])


def test_spec_json_beside_the_file_and_explicit_spec(tmp_path):
    spec = make_spec(category_ids=(5, 9, 11))
    path = build_model(tmp_path / "m.onnx", spec, metadata=False, write_spec_json=True)
    r = OrtRunner(path=path)
    assert r.spec == spec and r.precision == "fp32"  # no metadata: precision read from the graph
    other = make_spec(category_ids=(1, 2, 3))
    assert OrtRunner(path=path, spec=other).spec == other
    (tmp_path / "spec.json").unlink()
    with pytest.raises(ModelError, match=r"no 'retinaedge\.spec' metadata and no spec\.json"):
        OrtRunner(path=path)


def test_missing_and_corrupt_files_raise_one_line_model_errors(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx") as e:
        OrtRunner(path=tmp_path / "nope.onnx")
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelError, match=r"bad\.onnx") as e:
        OrtRunner(path=bad)
    assert "\n" not in str(e.value)


def test_graph_without_plugin_runs_unchanged_and_raw_selects_heads(tmp_path, rng):
    spec = make_spec(nms="none")
    path = build_model(tmp_path / "none.onnx", spec, nms="none")
    batch, _ = preprocess_batch(images(rng, 2), spec)
    with OrtRunner(path=path) as r:
        out = r.infer(batch)
    assert r.plugin is None and set(out) == {"cls_logits", "box_deltas", "boxes", "scores"}
    with OrtRunner(path=path, raw=True) as r:
        raw = r.infer(batch)
    assert set(raw) == {"cls_logits", "box_deltas"}
    np.testing.assert_array_equal(raw["cls_logits"], out["cls_logits"])


def test_raw_on_a_graph_without_the_heads_is_refused(tmp_path):
    spec = make_spec(io={"cls_logits": "logits_x", "box_deltas": "deltas_x"})
    path = build_model(tmp_path / "none.onnx", spec, nms="none")
    with pytest.raises(ModelError, match="logits_x"):
        OrtRunner(path=path, raw=True).activate()


def test_float_input_graph_takes_uint8_batches(tmp_path, rng):
    spec = make_spec(input_dtype="float32")
    path = build_model(tmp_path / "f.onnx", spec, input_type=TensorProto.FLOAT)
    batch, _ = preprocess_batch(images(rng, 1), spec)
    assert batch.dtype == np.float32
    with OrtRunner(path=path) as r:
        a = r.infer(batch)
        b = r.infer(batch.astype(np.uint8))
    np.testing.assert_array_equal(a["detection_boxes"], b["detection_boxes"])


def test_uint8_graph_refuses_float_batches(model_dir):
    with OrtRunner(path=model_dir / "model.fp32.onnx") as r, pytest.raises(InputError, match="uint8"):
        r.infer(np.zeros((1, 3, 64, 64), np.float32))


def test_spec_that_does_not_fit_the_graph_input_is_refused(model_dir):
    with pytest.raises(ModelError, match=r"\(B, 3, 128, 128\)"):
        OrtRunner(path=model_dir / "model.fp32.onnx", spec=make_spec(input_height=128, input_width=128)).activate()


def test_bad_constructor_arguments(model_dir):
    with pytest.raises(InputError, match="threads=0"):
        OrtRunner(path=model_dir / "model.fp32.onnx", threads=0)
    with pytest.raises(InputError, match="providers="):
        OrtRunner(path=model_dir / "model.fp32.onnx", providers="CPUExecutionProvider")
    with pytest.raises(ModelError, match="NoSuchExecutionProvider"):
        OrtRunner(path=model_dir / "model.fp32.onnx", providers=["NoSuchExecutionProvider"]).activate()


def test_unknown_precision_metadata_is_refused(tmp_path):
    path = build_model(tmp_path / "m.onnx", make_spec(), precision="int4")
    with pytest.raises(ModelError, match="'int4'"):
        OrtRunner(path=path)


def test_missing_onnxruntime_names_the_extra(model_dir, monkeypatch):
    r = OrtRunner(path=model_dir / "model.fp32.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingDependencyError, match="retinaedge\\[validate\\]"):
        r.activate()
    assert not r.is_active
