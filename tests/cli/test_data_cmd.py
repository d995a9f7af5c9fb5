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


def test_data_inspect_reports_and_writes(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json as _json

    from retinaedge.cli import main as _main
    from retinaedge.train.data.synth import write_synthetic_coco

    root = tmp_path / "d"
    write_synthetic_coco(root, train=8, val=2, size=64, seed=1)
    assert _main(["data", "inspect", "--data", str(root), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "anchor coverage at IoU >= 0.5" in out and "pin it with: --set data.input_size=" in out
    rep = _json.loads((tmp_path / "rep" / "data_report.json").read_text())
    # 64-px nominal sides jitter to 48..80: the median long side rounds up to 96, far below edge's 256
    assert rep["images"] == 8 and rep["fit"]["input_size"] == [96, 96]
    assert 0.0 <= rep["fit"]["coverage_before"]["covered"] <= rep["fit"]["coverage_after"]["covered"] <= 1.0


def test_data_inspect_bad_input_is_one_line(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from retinaedge.cli import main as _main

    assert _main(["data", "inspect", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not exist" in err[0]
