"""The moving-squares scene and its oracle, shared by the runtime and CLI tests (fixtures in tests/runtime/conftest.py).

The scene is deliberately simple: a red and a green square (one per class) moving over a dark background.
That lets an *oracle* runner find them from the pixels alone, so the whole plumbing (decode -> letterbox ->
runner -> post-process -> original coordinates -> JSONL -> pycocotools) can be checked for a near-perfect AP
without a trained model. The same oracle exists as a real ONNX graph (built with onnx.helper) so the CLI can
load it through ``runtime.models.load_runner``; a ``shift`` makes a deliberately degraded copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retinaedge.runtime.runner import Runner
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec, PostProcess

CLASS_NAMES = ("red", "green")
COLORS = {0: (230, 20, 20), 1: (20, 220, 20)}
BACKGROUND = (30, 30, 30)
SIDE = 16  # square side in pixels


def tiny_spec(**kw: object) -> DetectorSpec:
    """64x64 input, 2 FPN levels, 1 anchor per cell: the smallest spec the runtime accepts."""
    base: dict[str, object] = dict(
        class_names=CLASS_NAMES, category_ids=(3, 7), input_height=64, input_width=64,
        anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0), scales=(1.0,), aspect_ratios=(1.0,)),
        postprocess=PostProcess(max_detections=4),
    )
    base.update(kw)
    return DetectorSpec(**base)  # type: ignore[arg-type]


def square_positions(index: int, width: int, height: int) -> dict[int, tuple[int, int]]:
    """Top-left corner of each class's square in frame/image ``index`` (deterministic motion)."""
    span_x, span_y = width - SIDE - 4, height - SIDE - 4
    red = (2 + (3 * index) % span_x, 2 + (index // 2) % span_y)
    green = (2 + (span_x - 1 - (2 * index) % span_x), 2 + (span_y - 1 - index % span_y))
    return {0: red, 1: green}


def render(index: int, width: int, height: int) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    """One scene: (H, W, 3) uint8 RGB and its ground truth ``[(class, [x, y, w, h])]``."""
    img = np.empty((height, width, 3), np.uint8)
    img[:] = BACKGROUND
    gt = []
    for cls, (x, y) in square_positions(index, width, height).items():
        img[y:y + SIDE, x:x + SIDE] = COLORS[cls]
        gt.append((cls, [float(x), float(y), float(SIDE), float(SIDE)]))
    return img, gt


def coco_gt(frames: list[list[tuple[int, list[float]]]], width: int, height: int,
            file_names: list[str] | None = None, category_ids: tuple[int, ...] = (3, 7)) -> dict[str, object]:
    """COCO json for per-frame/per-image ground truth; image ids start at 100 (not the frame index)."""
    images, anns = [], []
    for i, objs in enumerate(frames):
        im: dict[str, object] = {"id": 100 + i, "width": width, "height": height, "frame_index": i,
                                 "file_name": file_names[i] if file_names else f"frame_{i:05d}.png"}
        images.append(im)
        for cls, box in objs:
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": category_ids[cls], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in zip(category_ids, CLASS_NAMES, strict=True)]
    return {"images": images, "annotations": anns, "categories": cats}


def write_clip(path: Path, frames: int, width: int = 96, height: int = 64, fps: int = 10) -> None:
    """An H.264 MP4 of the moving squares (keyframe every 10 frames so a corrupt GOP is local)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "g": "10", "crf": "18"}
        for i in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(render(i, width, height)[0], format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


class OracleRunner(Runner):
    """Finds the coloured squares in the letterboxed input: EfficientNMS-style outputs from the pixels.

    ``shift`` moves every box right by that many network pixels (a degraded model); ``drop_class`` hides one
    class (a model that misses objects).
    """

    backend = "ort"

    def __init__(self, *, spec: DetectorSpec | None = None, name: str = "oracle", precision: str = "fp32",
                 shift: float = 0.0, drop_class: int | None = None, max_batch: int | None = None) -> None:
        super().__init__()
        self.spec = spec or tiny_spec()
        self.name = name
        self.precision = precision  # type: ignore[assignment]
        self.shift = shift
        self.drop_class = drop_class
        self.max_batch = max_batch
        self.calls = 0
        self.activations = 0
        self.thread_ids: set[int] = set()

    def activate_impl(self) -> None:
        import threading

        self.activations += 1
        self.thread_ids.add(threading.get_ident())

    def deactivate_impl(self) -> None:
        pass

    def infer_impl(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.max_batch is not None and batch.shape[0] > self.max_batch:
            raise ValueError(f"batch {batch.shape[0]} > {self.max_batch}")
        self.calls += 1
        b = batch.shape[0]
        k = self.spec.postprocess.max_detections
        num = np.zeros((b, 1), np.int32)
        boxes = np.zeros((b, k, 4), np.float32)
        scores = np.zeros((b, k), np.float32)
        classes = np.zeros((b, k), np.int32)
        x = batch.astype(np.int32)
        r, g, bl = x[:, 0], x[:, 1], x[:, 2]
        masks = {0: (r > 150) & (g < 100) & (bl < 100), 1: (g > 150) & (r < 100) & (bl < 100)}
        for i in range(b):
            n = 0
            for cls, m in masks.items():
                if cls == self.drop_class or not m[i].any():
                    continue
                ys, xs = np.nonzero(m[i])
                boxes[i, n] = (xs.min() + self.shift, ys.min(), xs.max() + 1 + self.shift, ys.max() + 1)
                scores[i, n] = 0.9 - 0.1 * cls
                classes[i, n] = cls
                n += 1
            num[i, 0] = n
        return {"num_detections": num, "detection_boxes": boxes, "detection_scores": scores,
                "detection_classes": classes}


def oracle_onnx(path: Path, spec: DetectorSpec, *, precision: str = "fp32", shift: float = 0.0) -> Path:
    """The oracle as a real ONNX graph (uint8 images -> the four detection_* outputs), with spec metadata.

    Per class: a colour mask, its column/row occupancy (ReduceMax), first and last occupied index (ArgMax with
    and without ``select_last_index``) -> one box; score 0.9/0.8 when present, else 0 (filtered downstream).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = spec.input_height, spec.input_width
    nodes, inits = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    x = node("Cast", ["images"], "x", to=TensorProto.FLOAT)
    chans = {}
    for c in range(3):
        chans[c] = node("Gather", [x, const(f"idx{c}", np.array(c, np.int64))], f"ch{c}", axis=1)  # (B,H,W)
    hi, lo = const("hi", np.array(150.0, np.float32)), const("lo", np.array(100.0, np.float32))

    def mask(cls: int, main: int) -> str:
        parts = [node("Greater", [chans[main], hi], f"m{cls}_{main}")]
        for c in range(3):
            if c != main:
                parts.append(node("Less", [chans[c], lo], f"m{cls}_{c}"))
        a = node("And", [parts[0], parts[1]], f"m{cls}_and0")
        a = node("And", [a, parts[2]], f"m{cls}_and1")
        return node("Cast", [a], f"mask{cls}", to=TensorProto.FLOAT)

    masks = [mask(0, 0), mask(1, 1)]
    stacked = node("Concat", [node("Unsqueeze", [m, const(f"ax1_{i}", np.array([1], np.int64))], f"u{i}")
                              for i, m in enumerate(masks)], "masks", axis=1)  # (B,2,H,W)
    cols = node("ReduceMax", [stacked, const("ax2", np.array([2], np.int64))], "cols", keepdims=0)  # (B,2,W)
    rows = node("ReduceMax", [stacked, const("ax3", np.array([3], np.int64))], "rows", keepdims=0)  # (B,2,H)
    one = const("one", np.array(1.0, np.float32))
    coords = []
    for name, occ in (("x1", cols), ("y1", rows)):
        coords.append(node("Cast", [node("ArgMax", [occ], f"{name}_i", axis=2, keepdims=0)], name,
                           to=TensorProto.FLOAT))
    for name, occ in (("x2", cols), ("y2", rows)):
        last = node("ArgMax", [occ], f"{name}_i", axis=2, keepdims=0, select_last_index=1)
        coords.append(node("Add", [node("Cast", [last], f"{name}_f", to=TensorProto.FLOAT), one], name))
    x1, y1, x2, y2 = coords
    s = const("shift", np.array(shift, np.float32))
    x1, x2 = node("Add", [x1, s], "x1s"), node("Add", [x2, s], "x2s")
    node("Concat", [node("Unsqueeze", [v, const(f"ax_last{i}", np.array([2], np.int64))], f"b{i}")
                            for i, v in enumerate((x1, y1, x2, y2))], "detection_boxes", axis=2)  # (B,2,4)
    present = node("ReduceMax", [cols, const("ax2b", np.array([2], np.int64))], "present", keepdims=0)  # (B,2)
    node("Mul", [present, const("cls_score", np.array([0.9, 0.8], np.float32))], "detection_scores")
    zero_i = node("Cast", [node("Mul", [present, const("zero", np.array(0.0, np.float32))], "zeros")], "zeros_i",
                  to=TensorProto.INT32)
    node("Add", [zero_i, const("cls_ids", np.array([0, 1], np.int32))], "detection_classes")
    # num_detections (B, 1): both slots; absent classes have score 0 and are filtered by the score threshold
    nd = node("ReduceSum", [node("Add", [zero_i, const("ones_i", np.array([1, 1], np.int32))], "ones_b"),
                            const("ax1r", np.array([1], np.int64))], "num_detections", keepdims=1)
    del nd
    graph = helper.make_graph(
        nodes, "oracle",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["B", 3, h, w])],
        [helper.make_tensor_value_info("num_detections", TensorProto.INT32, ["B", 1]),
         helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, ["B", 2, 4]),
         helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, ["B", 2]),
         helper.make_tensor_value_info("detection_classes", TensorProto.INT32, ["B", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {"retinaedge.spec": spec.to_json(), "retinaedge.precision": precision, "retinaedge.nms": spec.nms,
            "retinaedge.target": "tensorrt"}
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    spec.save(path.parent / "spec.json")
    return path


PIPELINE_TINY = ["model.backbone=resnet18", "model.fpn_channels=8", "model.head_channels=8", "model.head_depth=1",
                 "model.gn_groups=4", "model.channels_last=false", "data.input_size=64", "anchors.strides=[8, 16]",
                 "data.progressive_size=0",
                 "anchors.sizes=[12, 24]"]


def build_pipeline(base: Path) -> dict[str, Path]:
    """The real pipeline, minus training: a tiny random RetinaNet (train/model.py) made confident enough to detect
    something, saved as a checkpoint, exported by export/ to ``model.fp32.onnx`` + ``model.fp16.onnx`` with
    EfficientNMS, and a COCO-layout DATA dir whose ground truth is the torch model's own detections (score >= 0.3),
    so AP, ΔAP and agreement are meaningful without training. Built once per session under ``base`` (shared by
    tests/runtime and tests/cli through the ``done`` marker). Takes ~30-60 s on 2 cores.
    """
    out = base / "pipeline"
    paths = {"root": out, "checkpoint": out / "ckpt.pt", "models": out / "models", "data": out / "data",
             "fp32": out / "models" / "model.fp32.onnx", "fp16": out / "models" / "model.fp16.onnx"}
    if (out / "done").exists():
        return paths
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx_graphsurgeon")
    from PIL import Image

    from retinaedge.export.config import ExportConfig
    from retinaedge.export.pipeline import export_model
    from retinaedge.runtime.bench import synthetic_image
    from retinaedge.runtime.runner import Detector
    from retinaedge.train.checkpoint import save_checkpoint
    from retinaedge.train.config import config_to_dict, load_config
    from retinaedge.train.model import build_model
    from retinaedge.train.torch_runner import TorchRunner

    torch.set_num_threads(1)
    config = load_config("edge", PIPELINE_TINY)
    spec = DetectorSpec(class_names=("a", "b"), category_ids=(3, 8), input_height=64, input_width=64,
                        anchors=AnchorSpec(strides=(8, 16), sizes=(12.0, 24.0)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(spec, config.model).eval()
    with torch.no_grad():  # a random head scores ~prior everywhere; sharpen it so the images decide
        for name, m in model.named_modules():
            if name.endswith("cls_logits") and isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(25.0)
                m.bias.fill_(-3.0)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(paths["checkpoint"], {
        "model": model.state_dict(), "config": config_to_dict(config), "spec": spec.to_dict(), "epoch": 0,
        "step": 0, "batch": 0, "elapsed_s": 0.0, "best_ap": -1.0, "optimizer": {}, "scaler": {}, "rng": {}})
    export_model(ExportConfig(checkpoint=paths["checkpoint"], out_dir=paths["models"], precisions=("fp32", "fp16"),
                              nms="efficient"), echo=lambda _line: None)
    val = paths["data"] / "val"
    val.mkdir(parents=True)
    (paths["data"] / "annotations").mkdir()
    sizes = [(90, 70), (64, 64), (100, 60), (70, 96), (80, 80), (64, 120)]
    images = [synthetic_image(h, w, seed=i) for i, (w, h) in enumerate(sizes)]
    dets = Detector(runner=TorchRunner(checkpoint=paths["checkpoint"]))(images)
    records, anns = [], []
    for i, (im, d) in enumerate(zip(images, dets, strict=True)):
        name = f"val_{i:02d}.png"
        Image.fromarray(im).save(val / name)
        records.append({"id": i + 1, "file_name": name, "height": im.shape[0], "width": im.shape[1]})
        for b, sc, c in zip(d.boxes.tolist(), d.scores.tolist(), d.classes.tolist(), strict=True):
            if sc >= 0.3:
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": spec.category_ids[c],
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1]),
                             "iscrowd": 0})
    if len(anns) < 6:
        raise RuntimeError(f"the sharpened random model made only {len(anns)} confident detections")
    cats = [{"id": c, "name": n} for c, n in zip(spec.category_ids, spec.class_names, strict=True)]
    (paths["data"] / "annotations" / "instances_val.json").write_text(
        json.dumps({"images": records, "annotations": anns, "categories": cats}))
    (out / "done").write_text("ok\n")
    return paths


def write_square_data(d: Path) -> Path:
    """A COCO-layout DATA dir (``annotations/instances_val.json``, ``val/*.png``) in ``d``: 8 lossless images of
    different sizes, so letterboxing and the mapping back to original pixels are exercised.
    """
    from PIL import Image

    (d / "val").mkdir(parents=True)
    (d / "annotations").mkdir()
    sizes = [(80, 64), (64, 96), (100, 70), (64, 64)] * 2
    gts, names = [], []
    for i, (w, h) in enumerate(sizes):
        img, gt = render(i * 5, w, h)
        name = f"img_{i:03d}.png"
        Image.fromarray(img).save(d / "val" / name)
        gts.append(gt)
        names.append(name)
    data = coco_gt(gts, 0, 0, names)
    for im, (w, h) in zip(data["images"], sizes, strict=True):  # type: ignore[arg-type]
        im["width"], im["height"] = w, h
    (d / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return d
