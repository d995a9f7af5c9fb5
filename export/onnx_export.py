"""torch -> ONNX for the raw RetinaNet heads, and the metadata every exported file carries.

The exported ("pre-NMS") graph maps ``images`` (B, 3, H, W) in the spec's input dtype (uint8 or float32 on the
0..255 scale; normalisation is inside the model) to ``cls_logits`` (B, N, K) raw class logits and
``box_deltas`` (B, N, 4) center-size deltas, N = ``spec.num_anchors`` in the anchor order of
`retinaedge.runtime.spec`. Precision variants are made from this graph and the NMS tail is appended last
(`retinaedge.export.surgery.finalize`).

Exporter choice (checked with torch 2.14.1): ``dynamo=True``
gives a clean graph (Cast/Sub/Div, Conv, Reshape with a ``-1`` batch, Transpose, Concat: 27 nodes for the
tiny model) while the TorchScript tracer adds a Shape/Gather/Unsqueeze/Concat chain per Reshape (101 nodes,
folded only partly by `sanitize` because the batch is dynamic). Both are numerically identical (1e-7). But
dynamo exports opset 18 and converts down, and that conversion fails for the ResNet-FPN's Resize at opset 17;
so ``auto`` (the default) uses dynamo at opset >= 18 and the TorchScript tracer at 17.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any

import numpy as np
import onnx

from retinaedge.export.config import Exporter, check_opset
from retinaedge.runtime.errors import InputError, ModelError
from retinaedge.runtime.onnxinfo import META_NMS, META_PRECISION, META_SPEC, META_TARGET
from retinaedge.runtime.spec import DetectorSpec, NmsMode

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
"""Name of the dynamic batch axis on every input and output."""



def export_onnx(
    model: Any,
    spec: DetectorSpec,
    *,
    opset: int = 17,
    exporter: Exporter = "auto",
) -> onnx.ModelProto:
    """Export the raw heads of a RetinaNet to ONNX with a dynamic batch axis.

    Args:
        model: ``torch.nn.Module`` whose ``forward(images (B,3,H,W) uint8/float 0..255)`` returns
            ``{"cls_logits": (B, N, K), "box_deltas": (B, N, 4)}``.
        spec: the detector spec the model was trained with.
        opset: ONNX opset (see `retinaedge.export.config.check_opset`).
        exporter: ``"dynamo"``, ``"torchscript"`` or ``"auto"`` (dynamo at opset >= 18, torchscript at 17; see
            `retinaedge.export.config.ExportConfig`).

    Returns:
        The pre-NMS model (shape-inferred), inputs ``spec.io.input``, outputs ``spec.io.cls_logits``,
        ``spec.io.box_deltas``.

    Raises:
        InputError: an unsupported opset or exporter.
        ModelError: the model's outputs do not match the spec (another architecture or class count).
    """
    import torch

    check_opset(opset)
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise InputError(f"exporter={exporter!r} is not supported; choose 'auto', 'dynamo' or 'torchscript'")
    if exporter == "auto":
        # dynamo writes opset 18+ natively; its down-conversion to 17 has no Resize adapter (FPN upsampling)
        exporter = "dynamo" if opset >= 18 else "torchscript"
        log.info("exporter auto -> %s for opset %d", exporter, opset)

    class HeadsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.inner(images)
            return out["cls_logits"], out["box_deltas"]

    wrapped = HeadsOnly(model).eval()
    dtype = torch.uint8 if spec.input_dtype == "uint8" else torch.float32
    # batch 2, not 1: a batch of 1 invites the tracer to specialise the batch dimension
    dummy = torch.full((2, 3, spec.input_height, spec.input_width), 114, dtype=dtype)
    with torch.no_grad():
        check_head_outputs(wrapped(dummy), spec)
    io_ = spec.io
    input_names, output_names = [io_.input], [io_.cls_logits, io_.box_deltas]
    sink = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                wrapped, (dummy,), None, opset_version=opset, dynamo=True, verbose=False,
                input_names=input_names, output_names=output_names,
                dynamic_shapes={"images": {0: torch.export.Dim(BATCH_DIM)}},
            )
            if program is None:
                raise ModelError("torch.onnx.export(dynamo=True) returned no program; try --exporter torchscript")
            proto = program.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(
                wrapped, (dummy,), buf, opset_version=opset, dynamo=False, do_constant_folding=True,  # type: ignore[arg-type]
                input_names=input_names, output_names=output_names,
                dynamic_axes={n: {0: BATCH_DIM} for n in [*input_names, *output_names]},
            )
            proto = onnx.load_from_string(buf.getvalue())
    log.debug("torch.onnx.export output: %s", sink.getvalue())
    got = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if got != [opset]:
        raise ModelError(
            f"torch.onnx.export wrote opset {got} but {opset} was asked; try another --opset or --exporter"
        )
    proto.producer_name = "retinaedge"
    return onnx.shape_inference.infer_shapes(proto)


def check_head_outputs(outputs: Any, spec: DetectorSpec) -> None:
    """Check ``(cls_logits, box_deltas)`` torch outputs against the spec's N and K.

    Raises:
        ModelError: naming the shapes received and expected.
    """
    cls_logits, box_deltas = outputs
    b = cls_logits.shape[0]
    want_c = (b, spec.num_anchors, spec.num_classes)
    want_b = (b, spec.num_anchors, 4)
    if tuple(cls_logits.shape) != want_c or tuple(box_deltas.shape) != want_b:
        raise ModelError(
            f"model outputs cls_logits {tuple(cls_logits.shape)} and box_deltas {tuple(box_deltas.shape)} but "
            f"the spec needs {want_c} and {want_b} (N anchors, K classes); the checkpoint's model and spec disagree"
        )


def set_metadata(
    model: onnx.ModelProto,
    spec: DetectorSpec,
    *,
    precision: str,
    nms: NmsMode,
    target: str = "tensorrt",
) -> onnx.ModelProto:
    """Write the spec (with ``nms`` set to the graph's mode), precision, NMS mode and target into
    ``metadata_props``, replacing earlier values. Returns ``model`` (changed in place).

    Args:
        precision: ``fp32`` | ``fp16`` | ``int8``.
        target: ``tensorrt``, or ``cpu`` for the ORT U8S8 file that TensorRT cannot take.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise InputError(f"metadata precision {precision!r} is not one of ['fp32', 'fp16', 'int8']")
    if target not in ("tensorrt", "cpu"):
        raise InputError(f"metadata target {target!r} is not one of ['tensorrt', 'cpu']")
    values = {
        META_SPEC: spec.replace(nms=nms).to_json(),
        META_PRECISION: precision,
        META_NMS: nms,
        META_TARGET: target,
    }
    keep = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)
    return model


def tensor_shape(model: onnx.ModelProto, name: str) -> list[int | str]:
    """Shape of a graph input/output/value_info by name (str for symbolic dims, -1 when unknown)."""
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if vi.name == name:
            dims: list[int | str] = []
            for d in vi.type.tensor_type.shape.dim:
                dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param or -1)
            return dims
    raise ModelError(f"tensor {name!r} is not in the graph; it has outputs {[o.name for o in model.graph.output]}")


def random_images(spec: DetectorSpec, batch: int, seed: int = 0) -> np.ndarray:
    """(B, 3, H, W) random pixels in the spec's input dtype, for smoke runs and shape checks."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, 3, spec.input_height, spec.input_width), dtype=np.uint8)
    return x if spec.input_dtype == "uint8" else x.astype(np.float32)
