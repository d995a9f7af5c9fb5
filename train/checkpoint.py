"""Training checkpoints: written atomically, plain tensors and Python types only, so they load with
``torch.load(weights_only=True)`` (no pickled classes, nothing executes on load).

Layout of a checkpoint (a dict)::

    format      "retinaedge-ckpt"          version   1
    model       state_dict                  config    `config_to_dict(TrainConfig)`
    spec        `DetectorSpec.to_dict()`    epoch     epochs completed (int)
    step        optimiser steps done        batch     batches done in the current epoch
    elapsed_s   training wall time so far   best_ap   best COCO AP so far (-1 before any eval)
    optimizer / scaler  state_dicts (``{}`` when saved for inference only)
    rng         {"torch", "cuda", "numpy", "python"} generator states
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from retinaedge.runtime.errors import ModelError
from retinaedge.runtime.spec import DetectorSpec

if TYPE_CHECKING:
    from retinaedge.train.config import TrainConfig
    from retinaedge.train.model import RetinaNet

CKPT_FORMAT = "retinaedge-ckpt"
CKPT_VERSION = 1

__all__ = [
    "CKPT_FORMAT", "CKPT_VERSION", "check_state_dict", "get_rng_state", "load_checkpoint", "read_checkpoint",
    "save_checkpoint", "set_rng_state",
]


def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy-global and Python RNG states as tensors and plain types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `get_rng_state` captured (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """``torch.save`` ``payload`` to a temp file in the same directory, then ``os.replace`` it into place.

    A crash mid-write leaves the previous file intact. ``format``/``version`` are added.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu", mmap: bool = False
                    ) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``.

    Args:
        path: the ``.pt`` file.
        map_location: where tensors go.
        mmap: memory-map tensors instead of reading them (cheap when only the spec/config is needed).

    Raises:
        ModelError: one line naming the file when it is missing, truncated/corrupt, not weights-only, or
            not a retinaedge checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint {str(p)!r} does not exist; pass RUN/ckpt_best.pt or RUN/ckpt_last.pt")
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; a cut copy loses its central directory
        raise ModelError(f"checkpoint {str(p)!r} is corrupt or truncated (not a torch zip archive); "
                         "re-train or re-copy it")
    try:
        data = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        text = str(e)
        marker = "WeightsUnpickler error:"
        if marker in text:
            text = text.split(marker, 1)[1]
        first = text.strip().splitlines()[0].split(" Please use")[0] if text.strip() else type(e).__name__
        raise ModelError(
            f"checkpoint {str(p)!r} holds more than tensors and plain types ({first[:160]}); "
            "only retinaedge training checkpoints load"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"checkpoint {str(p)!r} is corrupt or truncated ({msg[:160]}); re-train or re-copy it"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CKPT_FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ModelError(
            f"{str(p)!r} is not a retinaedge checkpoint (format={fmt!r}, expected {CKPT_FORMAT!r}); "
            "pass a ckpt_*.pt written by retinaedge train"
        )
    if data.get("version") != CKPT_VERSION:
        raise ModelError(
            f"checkpoint {str(p)!r} has version {data.get('version')!r}; this retinaedge reads {CKPT_VERSION}"
        )
    missing = [k for k in ("model", "config", "spec") if k not in data]
    if missing:
        raise ModelError(f"checkpoint {str(p)!r} lacks {missing}; it is incomplete")
    return data


def check_state_dict(model: torch.nn.Module, state: Mapping[str, Any], *, source: str) -> None:
    """Raise `ModelError` naming missing/unexpected keys and shape mismatches between ``model`` and ``state``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}{'...' if len(missing) > 4 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:4]}{'...' if len(unexpected) > 4 else ''} ({len(unexpected)})")
        if shapes:
            parts.append(f"shape mismatches [{'; '.join(shapes[:3])}{'...' if len(shapes) > 3 else ''}]")
        raise ModelError(
            f"{source} does not match the model architecture: {', '.join(parts)}; "
            "it was trained with a different model config"
        )


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu"
                    ) -> tuple[RetinaNet, DetectorSpec, TrainConfig]:
    """Rebuild the trained model from a checkpoint.

    Args:
        path: ``ckpt_best.pt`` / ``ckpt_last.pt``.
        device: where to put the model.

    Returns:
        ``(model, spec, config)``: the `RetinaNet` in eval mode on ``device``, its `DetectorSpec` and the
        `TrainConfig` it was trained with.

    Raises:
        ModelError: missing/corrupt file, or a state_dict that does not fit the architecture its config names
            (the message names the mismatching keys and shapes).
    """
    from retinaedge.runtime.errors import RetinaEdgeError
    from retinaedge.train.config import config_from_dict
    from retinaedge.train.model import build_model

    data = read_checkpoint(path)
    try:
        config = config_from_dict(data["config"])
        spec = DetectorSpec.from_dict(data["spec"])
    except RetinaEdgeError as e:
        raise ModelError(f"checkpoint {str(path)!r} has an unreadable config or spec ({e})") from None
    # the weights come from the checkpoint: never read backbone_weights files again
    model_config = config.model
    if getattr(model_config, "backbone_weights", None):
        import dataclasses

        model_config = dataclasses.replace(model_config, backbone_weights=None)
    model = build_model(spec, model_config)
    check_state_dict(model, data["model"], source=f"checkpoint {str(path)!r}")
    model.load_state_dict(data["model"])
    model.to(device).eval()
    return model, spec, config
