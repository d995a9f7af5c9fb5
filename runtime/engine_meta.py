"""The JSON sidecar written beside every TensorRT engine, and the check that refuses a mismatched engine.

An engine plan (``model.<precision>.engine``, raw bytes loadable by trtexec, DeepStream and Triton) is tied to
the TensorRT version and the GPU that built it. ``model.<precision>.engine.json`` records both, plus what the
runtime needs to use the engine (the `DetectorSpec`) and how it was built. numpy/json only: no TensorRT here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from retinaedge.runtime.errors import EngineMismatchError, ModelError
from retinaedge.runtime.io import atomic_write_text

SIDECAR_VERSION = 1
"""Bumped when a field changes meaning; `EngineSidecar.from_dict` refuses other versions."""

PRECISIONS = ("fp32", "fp16", "int8")
AMPERE = (8, 0)
"""Lowest compute capability a hardware-compatible (``AMPERE_PLUS``) engine runs on."""


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.fp16.engine`` -> ``model.fp16.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


@dataclass(frozen=True)
class EngineSidecar:
    """What an engine was built from, with and for.

    Attributes:
        trt_version: ``tensorrt.__version__`` of the builder, e.g. ``"10.3.0.30"``.
        device_name: GPU name as CUDA reports it, e.g. ``"Orin"`` or ``"NVIDIA H100 80GB HBM3"``.
        compute_capability: ``(major, minor)`` of that GPU, e.g. ``(8, 7)``.
        precision: ``fp32``, ``fp16`` or ``int8``: what the engine was asked to be and verified to contain.
        spec: `DetectorSpec.to_dict()` of the model.
        onnx_sha256: sha256 of the ONNX file the engine was parsed from.
        calib_hash: the calibration cache key (weakly-typed INT8 only), else None.
        build_options: the build settings (path, batch profile, workspace, ``dla_core``, ``version_compatible``,
            ``hardware_compatible`` ...); read the ones the runtime acts on through the properties below, which
            default as TensorRT does when a sidecar predates the key.
        build_time_s: wall time of ``build_serialized_network``.
        layer_precisions: share of the engine's layers per precision, keys ``fp32 fp16 int8 other``, summing to 1.
        num_layers: number of layers the engine inspector reported.
    """

    trt_version: str
    device_name: str
    compute_capability: tuple[int, int]
    precision: str
    spec: dict[str, Any]
    onnx_sha256: str
    calib_hash: str | None = None
    build_options: dict[str, Any] = field(default_factory=dict)
    build_time_s: float = 0.0
    layer_precisions: dict[str, float] = field(default_factory=dict)
    num_layers: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ModelError(
                f"engine sidecar precision={self.precision!r} is not one of {list(PRECISIONS)}; "
                "rebuild the engine with retinaedge build"
            )
        cc = tuple(self.compute_capability)
        if len(cc) != 2 or not all(isinstance(v, int) for v in cc):
            raise ModelError(
                f"engine sidecar compute_capability={self.compute_capability!r} is not (major, minor) integers; "
                "rebuild the engine with retinaedge build"
            )
        object.__setattr__(self, "compute_capability", (int(cc[0]), int(cc[1])))
        # JSON-normalised (tuples -> lists), so a sidecar equals its own round trip
        for name in ("spec", "build_options", "layer_precisions"):
            object.__setattr__(self, name, json.loads(json.dumps(getattr(self, name))))

    @property
    def version_compatible(self) -> bool:
        return bool(self.build_options.get("version_compatible", False))

    @property
    def hardware_compatible(self) -> bool:
        return bool(self.build_options.get("hardware_compatible", False))

    @property
    def dla_core(self) -> int | None:
        """The DLA core the engine was built for (``build_options["dla_core"]``, written by ``engines/build.py``),
        or None for a GPU engine and for sidecars written before the key existed.

        The runtime must set ``Runtime.DLA_core`` to it before deserialising: its default is -1
        (``NvInferRuntime.h`` ``IRuntime::setDLACore``, "Defaults to -1", NVIDIA/TensorRT v10.3.0).
        """
        value = self.build_options.get("dla_core")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelError(
                f"engine sidecar build_options.dla_core={value!r} must be a DLA core index >= 0 or null; "
                "rebuild the engine with retinaedge build"
            )
        return value

    def describe(self) -> str:
        """``TensorRT 10.3.0 on Orin (8.7)``."""
        return _describe(self.trt_version, self.device_name, self.compute_capability)

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["sidecar_version"] = SIDECAR_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineSidecar:
        """Build a sidecar from `to_dict` output, refusing unknown keys and other sidecar versions."""
        data = dict(data)
        version = data.pop("sidecar_version", None)
        if version != SIDECAR_VERSION:
            raise ModelError(
                f"engine sidecar_version={version!r} is not supported (this retinaedge reads {SIDECAR_VERSION}); "
                "rebuild the engine with retinaedge build"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown engine sidecar keys {unknown}; allowed: {sorted(known)}")
        cc = data.get("compute_capability")
        if isinstance(cc, list):
            data["compute_capability"] = tuple(cc)
        try:
            return cls(**data)
        except TypeError as e:  # a missing required key
            raise ModelError(f"incomplete engine sidecar: {e}; rebuild the engine with retinaedge build") from None

    @classmethod
    def from_json(cls, text: str) -> EngineSidecar:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelError(f"engine sidecar is not valid JSON ({e}); rebuild the engine") from None
        if not isinstance(data, dict):
            raise ModelError(f"engine sidecar JSON must be an object, got {type(data).__name__}")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the sidecar atomically (``path`` is the ``.json`` file, see `sidecar_path`)."""
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> EngineSidecar:
        p = Path(path)
        if not p.is_file():
            raise ModelError(
                f"engine sidecar {str(p)!r} does not exist; engines need the .engine.json written beside them "
                "by retinaedge build"
            )
        return cls.from_json(p.read_text())

    @classmethod
    def for_engine(cls, engine_path: str | Path) -> EngineSidecar:
        """Load the sidecar that belongs to ``engine_path``."""
        return cls.load(sidecar_path(engine_path))


def _describe(trt_version: str, device_name: str, cc: tuple[int, int]) -> str:
    return f"TensorRT {trt_version} on {device_name} ({cc[0]}.{cc[1]})"


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


VERSION_COMPATIBLE_SINCE = (8, 6)
"""Version-compatible plans exist from TensorRT 8.6, on both sides ("the plan must be built with a version at
least 8.6 or higher, and the runtime must be 8.6 or higher": docs.nvidia.com/deeplearning/tensorrt/10.16.1/
inference-library/version-compatibility.html)."""

CROSS_MAJOR_VERSION_COMPATIBLE = frozenset({(8, 9), (8, 10), (10, 11)})
"""(builder major, runtime major) pairs across which a version-compatible engine runs. 11.x "Engine
Compatibility" (docs.nvidia.com/deeplearning/tensorrt/11.1.0/inference-library/engine-compatibility.html): "engines
built with TensorRT 10 work with TensorRT 11"; 11.4.1 Support Matrix, Engine Portability: "Two combinations are
supported across major versions: TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime, and
TensorRT 8 version-compatible engines can run with a TensorRT 10 runtime. No other combination across major versions
is supported. For example, a TensorRT 8 engine cannot run with a TensorRT 11 runtime"; 10.16.1 "Version
Compatibility": "engines built with TensorRT 8 work with TensorRT 9 and TensorRT 10 runtimes"."""


def version_refusal(built: str, running: str, *, version_compatible: bool) -> str | None:
    """Why an engine built with TensorRT ``built`` cannot run on TensorRT ``running``, or None if it can.

    Rules: a plain engine runs only on the exact version that built it. A version-compatible one (built >= 8.6)
    runs on the same or a later version of the same major, or across the majors in
    `CROSS_MAJOR_VERSION_COMPATIBLE` (10 -> 11; 8 -> 9 and 10), never on an older one.
    """
    if running == built:
        return None
    if not version_compatible:
        return "the engine was not built version-compatible"
    b, r = _version_tuple(built), _version_tuple(running)
    if b[:2] < VERSION_COMPATIBLE_SINCE or r[:2] < VERSION_COMPATIBLE_SINCE:
        return "version-compatible engines need TensorRT >= 8.6 on both sides"
    if r < b:
        return "a version-compatible engine runs only on the TensorRT that built it or a later one"
    pair = (_major(built), _major(running))
    if pair[0] != pair[1] and pair not in CROSS_MAJOR_VERSION_COMPATIBLE:
        return (
            f"version-compatible engines cross major versions only "
            f"{', '.join(f'{a} -> {c}' for a, c in sorted(CROSS_MAJOR_VERSION_COMPATIBLE))} (NVIDIA's support matrix)"
        )
    return None


def _version_fix(built: str, running: str) -> str:
    """The rebuild hint; names ``--version-compatible`` where it would have let this engine run here."""
    if version_refusal(built, running, version_compatible=True) is None:
        return (
            f"rebuild with retinaedge build on this machine, or build with --version-compatible on TensorRT "
            f"{built} to run on later TensorRT ({running} included)"
        )
    return "rebuild with retinaedge build on this machine"


def check_compatible(
    sidecar: EngineSidecar, *, trt_version: str, device_name: str, compute_capability: tuple[int, int]
) -> None:
    """Refuse to run an engine on a TensorRT or GPU it was not built for.

    TensorRT itself fails late and cryptically here ("Version tag does not match", "generated on an
    incompatible device"). Rules: the TensorRT version must match exactly, unless the engine was built
    version-compatible (then `version_refusal`: a later version of the same major, or 10 -> 11 and 8 -> 9/10);
    the GPU must match by compute capability and name, unless the engine was built hardware-compatible (then any
    GPU of compute capability >= 8.0).

    Raises:
        EngineMismatchError: one line naming both sides, why, and the fix, e.g. "engine built with TensorRT 10.3.0
            on Orin (8.7), running TensorRT 10.13.0 on NVIDIA H100 (9.0) (TensorRT versions and GPUs differ; the
            engine was not built version-compatible): rebuild with retinaedge build on this machine ...".
    """
    cc = (int(compute_capability[0]), int(compute_capability[1]))
    why = version_refusal(sidecar.trt_version, trt_version, version_compatible=sidecar.version_compatible)
    version_ok = why is None
    if sidecar.hardware_compatible:
        device_ok = cc >= AMPERE
    else:
        device_ok = cc == sidecar.compute_capability and device_name == sidecar.device_name
    if version_ok and device_ok:
        return
    what = " and ".join(
        w for w, bad in (("TensorRT versions", not version_ok), ("GPUs", not device_ok)) if bad
    )
    fix = _version_fix(sidecar.trt_version, trt_version) if not version_ok else (
        "rebuild with retinaedge build on this machine"
    )
    raise EngineMismatchError(
        f"engine built with {sidecar.describe()}, running {_describe(trt_version, device_name, cc)} "
        f"({what} differ{'; ' + why if why else ''}): {fix}"
    )
