import json

from retinaedge.cli import main


def test_synth_writes_the_coco_layout(tmp_path, capsys):
    out = tmp_path / "DATA"
    rc = main(["data", "synth", str(out), "--train", "3", "--val", "2", "--size", "48", "--seed", "1", "--video",
               "--frames", "4"])
    assert rc == 0
    for split, n in (("train", 3), ("val", 2)):
        data = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == n
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(im["file_name"] for im in data["images"])
    gt = json.loads((out / "annotations" / "video_gt.json").read_text())
    assert (out / "video.mp4").stat().st_size > 0 and len(gt["images"]) == 4
    text = capsys.readouterr().out
    assert "categories  1:circle, 3:square, 7:triangle, 12:star, 20:cross" in text
    assert "train       3 images" in text and "video       4 frames 60x48" in text


def test_synth_bad_size_is_one_line_error(tmp_path, capsys):
    rc = main(["data", "synth", str(tmp_path / "D"), "--size", "8"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == ("retinaedge data: error: size=8 is too small; give an image side >= 32 pixels (default 256)\n")
