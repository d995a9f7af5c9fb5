"""Two COCO-format sets unlike the built-in synthetic one, for tuning the training recipe on more than one set.

The built-in set (``retinaedge data synth``) is 256-px square-ish JPEGs of five flat-coloured shapes. Real sets
differ from it in the ways these two do:

- ``glyphs``: 192x192 **PNG**, **10 classes that look alike** (the characters ``O 0 Q D C G 8 B S 5`` in several
  fonts, weights and slants), 14-72 px, 1-6 per image, slightly rotated, on a noisy, cluttered background with
  distractor glyphs of other characters (unlabelled) and strokes. Classification, not localisation, is hard.
- ``photos``: **non-square 320x240 JPEG** (quality 70; a tenth portrait), **20 classes** = 4 silhouettes x 5 surface
  textures, most of them elongated (aspect 1:3 .. 3:1, like vehicles and people), 10-140 px, 1-10 per image,
  on a **photographic-looking background** (multi-octave value noise, a horizon gradient, blurred blobs), with
  partial occlusion.

Deterministic by seed; ~20 s for both on 2 cores.

    python benchmarks/datasets.py glyphs benchmarks/out/glyphs
    python benchmarks/datasets.py photos benchmarks/out/photos
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


GLYPHS = "O0QDCG8BS5"
DISTRACTORS = "acemnorsuvwxz"
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf",
         "DejaVuSerif-Bold.ttf")


def _noise(rng: np.random.Generator, h: int, w: int, octaves: int = 4) -> np.ndarray:
    """Multi-octave value noise in [0, 1], (h, w)."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = 2 ** (o + 2)
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        im = Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
        out += amp * np.asarray(im, np.float32) / 255.0
        total += amp
        amp *= 0.55
    return out / total


def _write_split(root: Path, split: str, items: list[tuple[Image.Image, list[dict]]], categories: list[dict],
                 suffix: str, quality: int) -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (im, objs) in enumerate(items):
        name = f"{split}_{i:05d}{suffix}"
        if suffix == ".png":
            im.save(root / split / name)
        else:
            im.save(root / split / name, quality=quality)
        image_id = 1000 + i
        images.append({"id": image_id, "file_name": name, "width": im.width, "height": im.height})
        for o in objs:
            x, y, w, h = o["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": o["category_id"],
                         "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": round(w * h, 2),
                         "iscrowd": 0})
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": anns, "categories": categories}
    tmp = root / "annotations" / f".instances_{split}.json.tmp"
    tmp.write_text(json.dumps(data))
    tmp.replace(root / "annotations" / f"instances_{split}.json")


# ---- glyphs ------------------------------------------------------------------------------------------------

def _glyph_image(rng: np.random.Generator, fonts: list[Path], size: int = 192) -> tuple[Image.Image, list[dict]]:
    base = rng.uniform(90, 200)
    bg = (_noise(rng, size, size) - 0.5) * rng.uniform(60, 140) + base
    bg = np.clip(bg[..., None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(bg)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 12))):  # strokes
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(int(rng.integers(2, 5)))]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 255, 3)), width=int(rng.integers(1, 4)))
    objs = []
    placed: list[tuple[float, float, float, float]] = []

    def paste(ch: str, px: int, cat: int | None) -> None:
        font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), px)
        left, t, r, b = font.getbbox(ch)
        tile = Image.new("L", (r - left + 8, b - t + 8), 0)
        ImageDraw.Draw(tile).text((4 - left, 4 - t), ch, fill=255, font=font)
        tile = tile.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR, expand=True)
        bbox = tile.getbbox()
        if bbox is None:
            return
        tile = tile.crop(bbox)
        tw, th = tile.size
        if tw >= size or th >= size:
            return
        for _ in range(20):
            x, y = float(rng.uniform(0, size - tw)), float(rng.uniform(0, size - th))
            if cat is None or all(x + tw < a or a + c < x or y + th < b_ or b_ + d < y for a, b_, c, d in placed):
                break
        else:
            return
        lum = float(np.asarray(im.crop((int(x), int(y), int(x) + tw, int(y) + th)).convert("L")).mean())
        colour = tuple(int(v) for v in (rng.integers(0, 70, 3) if lum > 128 else rng.integers(185, 256, 3)))
        im.paste(Image.new("RGB", tile.size, colour), (int(x), int(y)), tile)
        if cat is not None:
            placed.append((x, y, tw, th))
            objs.append({"bbox": [x, y, tw, th], "category_id": cat})

    for _ in range(int(rng.integers(0, 4))):  # unlabelled distractor characters
        paste(DISTRACTORS[int(rng.integers(len(DISTRACTORS)))], int(rng.integers(12, 50)), None)
    for _ in range(int(rng.integers(1, 7))):
        k = int(rng.integers(len(GLYPHS)))
        paste(GLYPHS[k], int(math.exp(rng.uniform(math.log(16), math.log(80)))), 11 + 3 * k)
    noisy = np.asarray(im, np.float32) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), objs


def write_glyphs(root: str | Path, *, train: int = 600, val: int = 150, seed: int = 0) -> Path:
    """Write the ``glyphs`` set (see the module docstring) under ``root``."""
    root = Path(root)
    fonts = [_font_dir() / f for f in FONTS]
    cats = [{"id": 11 + 3 * k, "name": f"glyph_{c}", "supercategory": "glyph"} for k, c in enumerate(GLYPHS)]
    for split, n, code in (("train", train, 1), ("val", val, 2)):
        items = [_glyph_image(np.random.default_rng([seed, code, i]), fonts) for i in range(n)]
        _write_split(root, split, items, cats, ".png", 0)
    return root


# ---- photos ------------------------------------------------------------------------------------------------

SILHOUETTES = ("ellipse", "rect", "capsule", "diamond")
TEXTURES = ("stripes", "checker", "dots", "flat", "grain")
# per silhouette: the typical aspect (h / w) range, like vehicles (wide), people (tall), signs (round)
ASPECT = {"ellipse": (0.33, 0.6), "rect": (1.6, 3.0), "capsule": (0.4, 0.8), "diamond": (0.8, 1.25)}


def _texture(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = float(rng.uniform(4, 9))
    if kind == "stripes":
        ang = rng.uniform(0, math.pi)
        m = (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) > 0)[..., None]
    elif kind == "checker":
        m = (((xx // period) + (yy // period)) % 2 == 0)[..., None]
    elif kind == "dots":
        m = ((((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2) < (period / 3.2) ** 2)[..., None]
    elif kind == "flat":
        m = np.zeros((h, w, 1), bool)
    else:  # grain
        m = (rng.random((h, w)) > 0.5)[..., None]
    return np.where(m, c1, c2).astype(np.float32)


def _photo_background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    sky, ground = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
    horizon = rng.uniform(0.3, 0.7) * h
    t = np.clip((np.arange(h, dtype=np.float32)[:, None] - horizon) / (0.15 * h) + 0.5, 0, 1)[..., None]
    img = sky * (1 - t) + ground * t
    img = img + (_noise(rng, h, w, 5)[..., None] - 0.5) * rng.uniform(60, 160)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    blobs = Image.new("RGB", (w, h))
    mask = Image.new("L", (w, h), 0)
    d, dm = ImageDraw.Draw(blobs), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(6, 16))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 40)
        box = (x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r)
        d.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        dm.ellipse(box, fill=int(rng.integers(90, 200)))
    im.paste(blobs.filter(ImageFilter.GaussianBlur(3)), (0, 0), mask.filter(ImageFilter.GaussianBlur(3)))
    return im


def _silhouette_mask(kind: str, w: int, h: int) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if kind == "ellipse":
        d.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif kind == "rect":
        d.rectangle((0, 0, w - 1, h - 1), fill=255)
    elif kind == "capsule":
        d.rounded_rectangle((0, 0, w - 1, h - 1), radius=min(w, h) // 2, fill=255)
    else:
        d.polygon([(w / 2, 0), (w - 1, h / 2), (w / 2, h - 1), (0, h / 2)], fill=255)
    return m


def _photo_image(rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    w, h = (320, 240) if rng.random() > 0.1 else (240, 320)
    im = _photo_background(rng, h, w)
    objs = []
    for _ in range(int(rng.integers(1, 11))):
        s, t = int(rng.integers(len(SILHOUETTES))), int(rng.integers(len(TEXTURES)))
        kind = SILHOUETTES[s]
        side = math.exp(rng.uniform(math.log(12), math.log(120)))
        ar = rng.uniform(*ASPECT[kind])
        bw, bh = max(6, round(side / math.sqrt(ar))), max(6, round(side * math.sqrt(ar)))
        if bw >= w or bh >= h:
            continue
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        tex = _texture(rng, TEXTURES[t], bh, bw) * rng.uniform(0.7, 1.0) + rng.normal(0, 6, (bh, bw, 3))
        tile = Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8))
        im.paste(tile, (x, y), _silhouette_mask(kind, bw, bh))
        objs.append({"bbox": [float(x), float(y), float(bw), float(bh)], "category_id": 1 + s * len(TEXTURES) + t})
    # later objects occlude earlier ones; drop boxes more than 70 % hidden (rough: by later boxes' overlap)
    keep = []
    for i, o in enumerate(objs):
        x, y, bw, bh = o["bbox"]
        hidden = np.zeros((int(bh), int(bw)), bool)
        for p in objs[i + 1:]:
            px, py, pw, ph = p["bbox"]
            x0, y0 = int(max(0, px - x)), int(max(0, py - y))
            x1, y1 = int(min(bw, px + pw - x)), int(min(bh, py + ph - y))
            if x1 > x0 and y1 > y0:
                hidden[y0:y1, x0:x1] = True
        if hidden.mean() < 0.7:
            keep.append(o)
    im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.8))))
    return im, keep


def write_photos(root: str | Path, *, train: int = 800, val: int = 200, seed: int = 0) -> Path:
    """Write the ``photos`` set (see the module docstring) under ``root``."""
    root = Path(root)
    cats = [{"id": 1 + s * len(TEXTURES) + t, "name": f"{sil}_{tex}", "supercategory": sil}
            for s, sil in enumerate(SILHOUETTES) for t, tex in enumerate(TEXTURES)]
    for split, n, code in (("train", train, 1), ("val", val, 2)):
        items = [_photo_image(np.random.default_rng([seed, code, i])) for i in range(n)]
        _write_split(root, split, items, cats, ".jpg", 70)
    return root


WRITERS = {"glyphs": write_glyphs, "photos": write_photos}


def ensure(name: str, root: str | Path) -> Path:
    """The set ``name`` at ``root``, written there first when its annotations are missing."""
    root = Path(root)
    if not (root / "annotations" / "instances_val.json").is_file():
        print(f"writing the {name} set to {root} ...", flush=True)
        WRITERS[name](root)
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", choices=sorted(WRITERS))
    p.add_argument("out", type=Path)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    WRITERS[a.name](a.out, seed=a.seed)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
