"""Session fixtures for the export tests: a tiny spec + torch model, its pre-NMS ONNX, a tiny COCO-layout
dataset whose ground truth is the torch model's own confident detections (so AP differences between torch and
the exported variants are meaningful), and one full export of every precision.

Tiny means 64x64 inputs, 2 FPN levels (strides 8, 16), 8 channels, 3 classes: N = (8*8 + 4*4) * 9 = 720 anchors.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx_graphsurgeon")

from retinaedge.runtime.spec import DetectorSpec  # noqa: E402
from tests.support.export_helpers import TinyData, TinyRetina, smooth_image, torch_heads  # noqa: E402


@pytest.fixture(scope="session")
def tiny_spec() -> DetectorSpec:
    from tests.support.export_helpers import make_spec

    return make_spec()


@pytest.fixture(scope="session")
def tiny_model(tiny_spec: DetectorSpec) -> Any:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
        model = TinyRetina(tiny_spec).eval()
    return model


@pytest.fixture(scope="session")
def raw_onnx(tiny_model: Any, tiny_spec: DetectorSpec) -> Any:
    from retinaedge.export.onnx_export import export_onnx

    return export_onnx(tiny_model, tiny_spec, opset=17)


@pytest.fixture(scope="session")
def pre_nms(raw_onnx: Any, tiny_spec: DetectorSpec) -> Any:
    from retinaedge.export.surgery import prepare_pre_nms

    return prepare_pre_nms(raw_onnx, tiny_spec)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, tiny_spec: DetectorSpec) -> TinyData:
    """DATA/{train,val}/*.png + annotations/instances_val.json (GT = torch's detections with score >= 0.3)."""
    from PIL import Image

    from retinaedge.export.pipeline import detect_pre_nms
    from retinaedge.runtime.preprocess import load_image, preprocess_batch

    root = tmp_path_factory.mktemp("tinydata")
    rng = np.random.default_rng(1)
    for split, n in (("train", 10), ("val", 8)):
        (root / split).mkdir()
        for i in range(n):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            Image.fromarray(smooth_image(rng, h, w)).save(root / split / f"{split}_{i:02d}.png")
    (root / "train" / "zz_corrupt.png").write_bytes(b"\x89PNG not really")
    val_files = sorted((root / "val").glob("*.png"))
    images = [load_image(p) for p in val_files]
    batch, metas = preprocess_batch(images, tiny_spec)
    dets = detect_pre_nms(torch_heads(tiny_model, batch), tiny_spec, metas)
    anns, img_records = [], []
    for i, (p, im, d) in enumerate(zip(val_files, images, dets, strict=True)):
        img_records.append({"id": i + 1, "file_name": p.name, "height": im.shape[0], "width": im.shape[1]})
        for b, s, c in zip(d.boxes, d.scores, d.classes, strict=True):
            if s < 0.3:
                continue
            x1, y1, x2, y2 = (float(v) for v in b)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": tiny_spec.category_ids[int(c)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": cid, "name": n} for cid, n in zip(tiny_spec.category_ids, tiny_spec.class_names, strict=True)]
    (root / "annotations").mkdir()
    ann_file = root / "annotations" / "instances_val.json"
    ann_file.write_text(json.dumps({"images": img_records, "annotations": anns, "categories": cats}))
    assert len(anns) >= 8, "the tiny model should produce some confident detections for the pseudo ground truth"
    return TinyData(root, val_files, [r["id"] for r in img_records], ann_file)


@pytest.fixture(scope="session")
def full_export(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, tiny_spec: DetectorSpec,
                tiny_data: TinyData) -> Any:
    """One export of fp32, fp16, int8 (auto calibration) and int8-cpu with nms=efficient."""
    from retinaedge.export.config import ExportConfig
    from retinaedge.export.pipeline import export_model

    out = tmp_path_factory.mktemp("export")
    config = ExportConfig(checkpoint=None, out_dir=out, precisions=("fp32", "fp16", "int8", "int8-cpu"),
                          nms="efficient", calib_data=tiny_data.root, calib_images=16, heldout_images=8)
    lines: list[str] = []
    result = export_model(config, model=tiny_model, spec=tiny_spec, echo=lines.append)
    return result, lines
