"""``retinaedge infer`` on image folders and videos with .onnx models; never imports torch."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from retinaedge.cli import main
from tests.support import scenes

av = pytest.importorskip("av")
pytest.importorskip("onnxruntime")




@pytest.fixture(scope="module")
def oracle_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("oracle")
    return scenes.oracle_onnx(d / "model.fp32.onnx", scenes.tiny_spec())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return scenes.write_square_data(tmp_path_factory.mktemp("squares"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    scenes.write_clip(path, 20)
    return path


def test_image_folder(oracle_model, data, tmp_path, capsys):
    rc = main(["infer", "--model", str(oracle_model), "--source", str(data / "val"), "--out", str(tmp_path),
               "--batch", "3", "--quiet"])
    assert rc == 0
    lines = [json.loads(x) for x in (tmp_path / "detections.jsonl").read_text().splitlines()]
    gt = json.loads((data / "annotations" / "instances_val.json").read_text())
    assert [r["file"] for r in lines] == sorted(im["file_name"] for im in gt["images"])
    first = gt["images"][0]
    boxes = sorted(a["bbox"] for a in gt["annotations"] if a["image_id"] == first["id"])
    found = sorted([d["bbox"][0], d["bbox"][1], d["bbox"][2] - d["bbox"][0], d["bbox"][3] - d["bbox"][1]]
                   for d in lines[0]["detections"])
    np.testing.assert_allclose(found, boxes, atol=2.0)  # original-image pixels, not network pixels
    assert len(list((tmp_path / "annotated").glob("*.jpg"))) == len(lines)
    assert "images in" in capsys.readouterr().err


def test_video(oracle_model, clip, tmp_path):
    rc = main(["infer", "--model", str(oracle_model), "--source", str(clip), "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["status"] == "ok" and stats["frames_written"] == 20
    with av.open(str(tmp_path / "annotated.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 20


def test_corrupt_video_exits_1_with_a_one_line_warning(oracle_model, tmp_path, capsys, rng):
    src = tmp_path / "clip.mp4"
    scenes.write_clip(src, 40)
    with av.open(str(src)) as c:
        pos = [p.pos for p in c.demux(video=0) if p.size][20]
    data = bytearray(src.read_bytes())
    data[pos:pos + 1500] = rng.integers(0, 256, 1500, dtype=np.uint8).tobytes()
    src.write_bytes(bytes(data))
    rc = main(["infer", "--model", str(oracle_model), "--source", str(src), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    warning = [ln for ln in err if "warning" in ln]
    assert len(warning) == 1 and "stream broke after" in warning[0] and "wrote" in warning[0]


def test_missing_source_is_a_one_line_error(oracle_model, tmp_path, capsys):
    rc = main(["infer", "--model", str(oracle_model), "--source", str(tmp_path / "nope.mp4"), "--out", str(tmp_path)])
    assert rc == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


NO_TORCH = textwrap.dedent("""
    import json, sys
    if {block}:
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        sys.modules["torchvision"] = None
    from retinaedge.cli import main
    rc = [main(["infer", "--model", {model!r}, "--source", {video!r}, "--out", {out!r} + "/v", "--quiet"]),
          main(["infer", "--model", {model!r}, "--source", {images!r}, "--out", {out!r} + "/i", "--quiet"])]
    loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in ("torch", "torchvision") and v)
    print(json.dumps({{"rc": rc, "torch_modules": loaded}}))
""")


@pytest.mark.parametrize("block", [False, True], ids=["torch-installed", "torch-blocked"])
def test_infer_never_imports_torch(block, tmp_path_factory, clip, data, tmp_path):
    """With the real exported graph (EfficientNMS emulated on CPU): torch is never imported, and infer works
    where torch cannot be imported at all."""
    pipeline = scenes.build_pipeline(tmp_path_factory.getbasetemp())
    code = NO_TORCH.format(block=block, model=str(pipeline["fp32"]), video=str(clip), images=str(data / "val"),
                           out=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"rc": [0, 0], "torch_modules": []}
    assert (tmp_path / "v" / "annotated.mp4").is_file() and (tmp_path / "i" / "detections.jsonl").is_file()


def test_image_folder_is_read_as_displayed_by_exif_orientation(oracle_model, tmp_path):
    # a phone photo stored 96 wide x 64 high, EXIF orientation 6 (viewers turn it 90 degrees clockwise and show
    # it 64 x 96); the red square is stored at x 60..76, y 4..20. Turned clockwise, stored (x, y) is shown at
    # (63 - y, x): x 44..60, y 60..76. infer read the stored pixels and reported [60, 4, 76, 20] in a 96 x 64 frame.
    from PIL import Image

    stored = np.full((64, 96, 3), scenes.BACKGROUND, np.uint8)
    stored[4:20, 60:76] = scenes.COLORS[0]
    src = tmp_path / "photos"
    src.mkdir()
    img = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(src / "phone.jpg", exif=exif, quality=100)
    out = tmp_path / "out"
    rc = main(["infer", "--model", str(oracle_model), "--source", str(src), "--out", str(out), "--quiet"])
    assert rc == 0
    (line,) = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    assert (line["width"], line["height"]) == (64, 96)
    (red,) = [d for d in line["detections"] if d["class"] == 0]
    np.testing.assert_allclose(red["bbox"], [44, 60, 60, 76], atol=2.5)
    with Image.open(out / "annotated" / "phone.jpg") as drawn:
        assert drawn.size == (64, 96) and not drawn.getexif().get(0x0112)  # shown as is by any viewer


def test_image_folder_with_shared_stems_writes_one_annotated_copy_each(oracle_model, tmp_path):
    # a.jpg (red, 96 x 64) and a.png (green, 64 x 80) were both drawn to annotated/a.jpg, the second over the first
    from PIL import Image

    src = tmp_path / "photos"
    src.mkdir()
    for name, cls, (w, h) in (("a.jpg", 0, (96, 64)), ("a.png", 1, (64, 80)), ("b.png", 0, (80, 80))):
        img = np.full((h, w, 3), scenes.BACKGROUND, np.uint8)
        img[8:24, 8:24] = scenes.COLORS[cls]
        Image.fromarray(img).save(src / name, quality=100)
    out = tmp_path / "out"
    assert main(["infer", "--model", str(oracle_model), "--source", str(src), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in (out / "annotated").iterdir()) == ["a.jpg.jpg", "a.png.jpg", "b.jpg"]
    lines = {x["file"]: x for x in map(json.loads, (out / "detections.jsonl").read_text().splitlines())}
    assert {f: x["annotated"] for f, x in lines.items()} == {
        "a.jpg": "annotated/a.jpg.jpg", "a.png": "annotated/a.png.jpg", "b.png": "annotated/b.jpg"}
    for name, x in lines.items():
        assert [d["class"] for d in x["detections"]] == [0 if name != "a.png" else 1]
        with Image.open(out / x["annotated"]) as drawn:
            assert drawn.size == (x["width"], x["height"]) == Image.open(src / name).size


def test_one_image_file_is_run_as_an_image(oracle_model, tmp_path):
    # a single .jpg went down the video path: stored orientation and a one-frame annotated.mp4
    from PIL import Image

    img = np.full((64, 96, 3), scenes.BACKGROUND, np.uint8)
    img[4:20, 60:76] = scenes.COLORS[0]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(tmp_path / "Phone.JPG", exif=exif, quality=100)
    out = tmp_path / "out"
    rc = main(["infer", "--model", str(oracle_model), "--source", str(tmp_path / "Phone.JPG"), "--out", str(out),
               "--quiet"])
    assert rc == 0 and not (out / "annotated.mp4").exists()
    (line,) = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    assert line["file"] == "Phone.JPG" and (line["width"], line["height"]) == (64, 96)  # as displayed
    np.testing.assert_allclose(line["detections"][0]["bbox"], [44, 60, 60, 76], atol=2.5)
    assert (out / line["annotated"]).is_file()


def test_min_score_default_is_the_runtime_one():
    # the CLI cannot import runtime.outputs at parse time (it would load numpy and PIL for every command)
    from retinaedge.cli import build_parser
    from retinaedge.runtime.outputs import DRAW_MIN_SCORE

    args = build_parser().parse_args(["infer", "--model", "m.onnx", "--source", "s", "--out", "o"])
    assert args.min_score == DRAW_MIN_SCORE
