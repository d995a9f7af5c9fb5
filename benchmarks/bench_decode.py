"""Training-image decode: `load_image(reduce_to=...)` (libjpeg DCT scaling) vs a full decode, same run.

Each image is decoded and letterboxed to the spec's input, as one training item is (`CocoDetection`), once with
the full decode and once with ``reduce_to`` the letterboxed size (what training passes); the two alternate in
rounds and the ratio of median times is printed, per image size. The JPEGs are generated (smooth noise, quality
90): a 12 MP phone photo (4000x3000), a 1920x1080 frame and a COCO-sized 640x480 image, which is under twice the
input and so decodes in full either way (the ratio should be ~1).

    .venv/bin/python benchmarks/bench_decode.py --size 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retinaedge.runtime.preprocess import letterbox, letterbox_params, load_image
from retinaedge.runtime.spec import DetectorSpec


def _write(path: Path, w: int, h: int) -> None:
    rng = np.random.default_rng(0)
    small = (rng.random((max(1, h // 10), max(1, w // 10), 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path, quality=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="network input (the edge preset's 256)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=4, help="decodes per variant per round")
    args = p.parse_args(argv)
    spec = DetectorSpec(class_names=("a",), input_height=args.size, input_width=args.size)
    print(f"decode + letterbox to {args.size} px, {args.rounds}x{args.reps} each, median ms")
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in ((4000, 3000), (1920, 1080), (640, 480)):
            path = Path(tmp) / f"{w}x{h}.jpg"
            _write(path, w, h)
            _, (nh, nw) = letterbox_params(h, w, spec)
            variants = {"full": {}, "reduced": {"reduce_to": (nw, nh)}}
            times: dict[str, list[float]] = {k: [] for k in variants}
            shapes = {}
            for r in range(args.rounds):
                for name in (list(variants) if r % 2 == 0 else list(reversed(variants))):
                    for _ in range(args.reps):
                        t0 = time.perf_counter()
                        image = load_image(path, **variants[name])
                        letterbox(image, spec)
                        times[name].append(time.perf_counter() - t0)
                        shapes[name] = image.shape[:2]
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            print(f"  {w}x{h}: full {med['full']:7.1f} ms  reduced {med['reduced']:6.1f} ms (decoded "
                  f"{shapes['reduced'][1]}x{shapes['reduced'][0]})  ratio {med['full'] / med['reduced']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
