"""Namespaces with the names the TensorRT Python bindings really export, per version (test helper).

Source: NVIDIA/TensorRT ``python/src/infer/pyCore.cpp`` (enums: ``py::enum_<...>(m, "...").value("...")``;
classes: the ``.def``/``.def_property`` names of ``py::class_<...>(m, "...")``) and ``python/src/infer/pyInt8.cpp``
(the calibrator classes) at the tags ``v8.6.1`` (JetPack 5), ``v10.3.0`` (JetPack 6) and ``v11.1`` (the newest
source; TensorRT 11.1 has no ``pyInt8.cpp`` at all). The pip ``tensorrt`` 11.4 wheel lacks the same names
(``BuilderFlag.FP16``/``INT8``, ``IInt8*Calibrator*``, ``int8_calibrator``, ``EXPLICIT_BATCH``), checked in the
wheel (docs/TENSORRT.md). Only the classes capability detection, the builder and the runner touch are
listed, each with all its bound members (extracted from the sources above, dunder methods left out).
"""

from __future__ import annotations

import enum
from types import ModuleType

VERSIONS = {"8.6": "8.6.1", "10.3": "10.3.0", "11.1": "11.1.0"}

ENUMS: dict[str, dict[str, list[str]]] = {
    "8.6": {
        "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"],
        "BuilderFlag": ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "DISABLE_TIMING_CACHE",
                        "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
                        "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
                        "FP8"],
        "DeviceType": ["GPU", "DLA"],
        "MemoryPoolType": ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM"],
        "ProfilingVerbosity": ["LAYER_NAMES_ONLY", "DETAILED", "NONE", "DEFAULT", "VERBOSE"],
        "HardwareCompatibilityLevel": ["NONE", "AMPERE_PLUS"],
        "LayerInformationFormat": ["ONELINE", "JSON"],
        "TensorIOMode": ["NONE", "INPUT", "OUTPUT"],
    },
    "10.3": {
        "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH", "STRONGLY_TYPED"],
        "BuilderFlag": ["FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
                        "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                        "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS",
                        "DISABLE_COMPILATION_CACHE", "WEIGHTLESS", "STRIP_PLAN", "REFIT_IDENTICAL",
                        "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL"],
        "DeviceType": ["GPU", "DLA"],
        "MemoryPoolType": ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM",
                           "TACTIC_SHARED_MEMORY"],
        "ProfilingVerbosity": ["LAYER_NAMES_ONLY", "DETAILED", "NONE"],
        "HardwareCompatibilityLevel": ["NONE", "AMPERE_PLUS"],
        "LayerInformationFormat": ["ONELINE", "JSON"],
        "TensorIOMode": ["NONE", "INPUT", "OUTPUT"],
    },
    "11.1": {
        "NetworkDefinitionCreationFlag": ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
        "BuilderFlag": ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE", "TF32",
                        "SPARSE_WEIGHTS", "SAFETY_SCOPE", "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
                        "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL",
                        "WEIGHT_STREAMING", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY",
                        "DISTRIBUTIVE_INDEPENDENCE"],
        "DeviceType": ["GPU", "DLA"],
        "MemoryPoolType": ["WORKSPACE", "DLA_MANAGED_SRAM", "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM",
                           "TACTIC_SHARED_MEMORY"],
        "ProfilingVerbosity": ["LAYER_NAMES_ONLY", "DETAILED", "NONE"],
        "HardwareCompatibilityLevel": ["NONE", "AMPERE_PLUS", "SAME_COMPUTE_CAPABILITY"],
        "LayerInformationFormat": ["ONELINE", "JSON"],
        "TensorIOMode": ["NONE", "INPUT", "OUTPUT"],
    },
}

CLASSES: dict[str, dict[str, list[str]]] = {
    "8.6": {
        "Builder": [
            "build_engine", "build_serialized_network", "create_builder_config", "create_network",
            "create_optimization_profile", "error_recorder", "get_plugin_registry", "gpu_allocator",
            "is_network_supported", "logger", "max_DLA_batch_size", "max_batch_size", "max_threads",
            "num_DLA_cores", "platform_has_fast_fp16", "platform_has_fast_int8", "platform_has_tf32", "reset"
        ],
        "IBuilderConfig": [
            "DLA_core", "add_optimization_profile", "algorithm_selector", "avg_timing_iterations",
            "builder_optimization_level", "can_run_on_DLA", "clear_flag", "clear_quantization_flag",
            "create_timing_cache", "default_device_type", "engine_capability", "flags", "get_calibration_profile",
            "get_device_type", "get_flag", "get_memory_pool_limit", "get_preview_feature", "get_quantization_flag",
            "get_tactic_sources", "get_timing_cache", "hardware_compatibility_level", "int8_calibrator",
            "is_device_type_set", "max_aux_streams", "max_workspace_size", "min_timing_iterations",
            "num_optimization_profiles", "plugins_to_serialize", "profile_stream", "profiling_verbosity",
            "quantization_flags", "reset", "reset_device_type", "set_calibration_profile", "set_device_type",
            "set_flag", "set_memory_pool_limit", "set_preview_feature", "set_quantization_flag",
            "set_tactic_sources", "set_timing_cache"
        ],
        "ICudaEngine": [
            "binding_is_input", "create_engine_inspector", "create_execution_context",
            "create_execution_context_without_device_memory", "device_memory_size", "engine_capability",
            "error_recorder", "get_binding_bytes_per_component", "get_binding_components_per_element",
            "get_binding_dtype", "get_binding_format", "get_binding_format_desc", "get_binding_index",
            "get_binding_name", "get_binding_shape", "get_binding_vectorized_dim", "get_location",
            "get_profile_shape", "get_profile_shape_input", "get_tensor_bytes_per_component",
            "get_tensor_components_per_element", "get_tensor_dtype", "get_tensor_format", "get_tensor_format_desc",
            "get_tensor_location", "get_tensor_mode", "get_tensor_name", "get_tensor_profile_shape",
            "get_tensor_shape", "get_tensor_vectorized_dim", "hardware_compatibility_level",
            "has_implicit_batch_dimension", "is_execution_binding", "is_shape_binding", "is_shape_inference_io",
            "max_batch_size", "name", "num_aux_streams", "num_bindings", "num_io_tensors", "num_layers",
            "num_optimization_profiles", "profiling_verbosity", "refittable", "serialize", "tactic_sources"
        ],
        "IExecutionContext": [
            "active_optimization_profile", "all_binding_shapes_specified", "all_shape_inputs_specified",
            "debug_sync", "device_memory", "engine", "enqueue_emits_profile", "error_recorder", "execute",
            "execute_async", "execute_async_v2", "execute_async_v3", "execute_v2", "get_binding_shape",
            "get_input_consumed_event", "get_max_output_size", "get_output_allocator", "get_shape", "get_strides",
            "get_tensor_address", "get_tensor_shape", "get_tensor_strides", "infer_shapes", "name",
            "nvtx_verbosity", "persistent_cache_limit", "profiler", "report_to_profiler", "set_aux_streams",
            "set_binding_shape", "set_input_consumed_event", "set_input_shape", "set_optimization_profile_async",
            "set_output_allocator", "set_shape_input", "set_tensor_address", "temporary_allocator"
        ],
        "Runtime": [
            "DLA_core", "deserialize_cuda_engine", "engine_host_code_allowed", "error_recorder",
            "get_plugin_registry", "gpu_allocator", "load_runtime", "logger", "max_threads", "num_DLA_cores",
            "tempfile_control_flags", "temporary_directory"
        ],
        "EngineInspector": [
            "error_recorder", "execution_context", "get_engine_information", "get_layer_information"
        ],
    },
    "10.3": {
        "Builder": [
            "build_serialized_network", "create_builder_config", "create_network", "create_optimization_profile",
            "error_recorder", "get_plugin_registry", "gpu_allocator", "is_network_supported", "logger",
            "max_DLA_batch_size", "max_threads", "num_DLA_cores", "platform_has_fast_fp16",
            "platform_has_fast_int8", "platform_has_tf32", "reset"
        ],
        "IBuilderConfig": [
            "DLA_core", "add_optimization_profile", "algorithm_selector", "avg_timing_iterations",
            "builder_optimization_level", "can_run_on_DLA", "clear_flag", "clear_quantization_flag",
            "create_timing_cache", "default_device_type", "engine_capability", "flags", "get_calibration_profile",
            "get_device_type", "get_flag", "get_memory_pool_limit", "get_preview_feature", "get_quantization_flag",
            "get_tactic_sources", "get_timing_cache", "hardware_compatibility_level", "int8_calibrator",
            "is_device_type_set", "max_aux_streams", "num_optimization_profiles", "plugins_to_serialize",
            "profile_stream", "profiling_verbosity", "progress_monitor", "quantization_flags", "reset",
            "reset_device_type", "runtime_platform", "set_calibration_profile", "set_device_type", "set_flag",
            "set_memory_pool_limit", "set_preview_feature", "set_quantization_flag", "set_tactic_sources",
            "set_timing_cache"
        ],
        "ICudaEngine": [
            "create_engine_inspector", "create_execution_context", "create_execution_context_without_device_memory",
            "create_serialization_config", "device_memory_size", "device_memory_size_v2", "engine_capability",
            "error_recorder", "get_device_memory_size_for_profile", "get_device_memory_size_for_profile_v2",
            "get_tensor_bytes_per_component", "get_tensor_components_per_element", "get_tensor_dtype",
            "get_tensor_format", "get_tensor_format_desc", "get_tensor_location", "get_tensor_mode",
            "get_tensor_name", "get_tensor_profile_shape", "get_tensor_profile_values", "get_tensor_shape",
            "get_tensor_vectorized_dim", "get_weight_streaming_automatic_budget", "hardware_compatibility_level",
            "has_implicit_batch_dimension", "is_debug_tensor", "is_shape_inference_io",
            "minimum_weight_streaming_budget", "name", "num_aux_streams", "num_io_tensors", "num_layers",
            "num_optimization_profiles", "profiling_verbosity", "refittable", "serialize", "serialize_with_config",
            "streamable_weights_size", "tactic_sources", "weight_streaming_budget", "weight_streaming_budget_v2",
            "weight_streaming_scratch_memory_size"
        ],
        "IExecutionContext": [
            "active_optimization_profile", "all_binding_shapes_specified", "all_shape_inputs_specified",
            "debug_sync", "device_memory", "engine", "enqueue_emits_profile", "error_recorder", "execute_async_v3",
            "execute_v2", "get_debug_listener", "get_debug_state", "get_input_consumed_event",
            "get_max_output_size", "get_output_allocator", "get_tensor_address", "get_tensor_shape",
            "get_tensor_strides", "infer_shapes", "name", "nvtx_verbosity", "persistent_cache_limit", "profiler",
            "report_to_profiler", "set_all_tensors_debug_state", "set_aux_streams", "set_debug_listener",
            "set_device_memory", "set_input_consumed_event", "set_input_shape", "set_optimization_profile_async",
            "set_output_allocator", "set_tensor_address", "set_tensor_debug_state", "temporary_allocator",
            "update_device_memory_size_for_shapes"
        ],
        "Runtime": [
            "DLA_core", "deserialize_cuda_engine", "engine_host_code_allowed", "error_recorder",
            "get_plugin_registry", "gpu_allocator", "load_runtime", "logger", "max_threads", "num_DLA_cores",
            "tempfile_control_flags", "temporary_directory"
        ],
        "EngineInspector": [
            "error_recorder", "execution_context", "get_engine_information", "get_layer_information"
        ],
    },
    "11.1": {
        "Builder": [
            "build_engine_with_config", "build_serialized_network", "build_serialized_network_to_stream",
            "create_builder_config", "create_network", "create_optimization_profile", "error_recorder",
            "get_plugin_registry", "gpu_allocator", "is_network_supported", "logger", "max_DLA_batch_size",
            "max_threads", "num_DLA_cores", "reset"
        ],
        "IBuilderConfig": [
            "DLA_core", "add_optimization_profile", "all_build_routes", "avg_timing_iterations", "build_route",
            "builder_optimization_level", "can_run_on_DLA", "clear_flag", "create_timing_cache",
            "default_device_type", "engine_capability", "flags", "get_device_type", "get_flag",
            "get_memory_pool_limit", "get_preview_feature", "get_tactic_sources", "get_timing_cache",
            "hardware_compatibility_level", "is_device_type_set", "l2_limit_for_tiling", "max_aux_streams",
            "max_num_tactics", "num_optimization_profiles", "plugins_to_serialize", "profile_stream",
            "profiling_verbosity", "progress_monitor", "remote_auto_tuning_config", "reset", "reset_device_type",
            "runtime_platform", "set_device_type", "set_flag", "set_memory_pool_limit", "set_preview_feature",
            "set_tactic_sources", "set_timing_cache", "tiling_optimization_level"
        ],
        "ICudaEngine": [
            "create_engine_inspector", "create_execution_context", "create_runtime_config",
            "create_serialization_config", "device_memory_size_v2", "engine_capability", "error_recorder",
            "get_aliased_input_tensor", "get_device_memory_size_for_profile_v2", "get_engine_stat",
            "get_tensor_bytes_per_component", "get_tensor_components_per_element", "get_tensor_dtype",
            "get_tensor_format", "get_tensor_format_desc", "get_tensor_location", "get_tensor_mode",
            "get_tensor_name", "get_tensor_profile_shape", "get_tensor_profile_values", "get_tensor_shape",
            "get_tensor_vectorized_dim", "get_weight_streaming_automatic_budget", "hardware_compatibility_level",
            "is_debug_tensor", "is_shape_inference_io", "name", "num_aux_streams", "num_io_tensors", "num_layers",
            "num_optimization_profiles", "profiling_verbosity", "refittable", "serialize", "serialize_with_config",
            "streamable_weights_size", "tactic_sources", "weight_streaming_budget_v2",
            "weight_streaming_scratch_memory_size"
        ],
        "IExecutionContext": [
            "active_optimization_profile", "all_binding_shapes_specified", "debug_sync", "device_memory", "engine",
            "enqueue_emits_profile", "error_recorder", "execute_async_v3", "execute_v2", "get_debug_listener",
            "get_debug_state", "get_input_consumed_event", "get_max_output_size", "get_output_allocator",
            "get_runtime_config", "get_tensor_address", "get_tensor_shape", "get_tensor_strides", "infer_shapes",
            "name", "nvtx_verbosity", "persistent_cache_limit", "profiler", "report_to_profiler",
            "set_all_tensors_debug_state", "set_aux_streams", "set_communicator", "set_debug_listener",
            "set_device_memory", "set_input_consumed_event", "set_input_shape", "set_optimization_profile_async",
            "set_output_allocator", "set_tensor_address", "set_tensor_debug_state", "temporary_allocator",
            "unfused_tensors_debug_state", "update_device_memory_size_for_shapes"
        ],
        "Runtime": [
            "DLA_core", "deserialize_cuda_engine", "engine_host_code_allowed", "error_recorder",
            "get_plugin_registry", "gpu_allocator", "load_runtime", "logger", "max_threads", "num_DLA_cores",
            "tempfile_control_flags", "temporary_directory"
        ],
        "EngineInspector": [
            "error_recorder", "execution_context", "get_engine_information", "get_layer_information"
        ],
    },
}

# module-level names beyond the enums and classes above (pyInt8.cpp; m.def in pyPlugin.cpp; pyOnnx.cpp)
TOP_LEVEL: dict[str, list[str]] = {
    "8.6": ["IInt8Calibrator", "IInt8LegacyCalibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2",
            "IInt8MinMaxCalibrator", "CalibrationAlgoType", "init_libnvinfer_plugins", "Logger", "OnnxParser"],
    "10.3": ["IInt8Calibrator", "IInt8LegacyCalibrator", "IInt8EntropyCalibrator", "IInt8EntropyCalibrator2",
             "IInt8MinMaxCalibrator", "CalibrationAlgoType", "init_libnvinfer_plugins", "Logger", "OnnxParser"],
    "11.1": ["init_libnvinfer_plugins", "Logger", "OnnxParser"],
}

FLAVOURS = tuple(VERSIONS)


def namespace(flavour: str, *, version: str | None = None) -> ModuleType:
    """A ``tensorrt``-like module holding exactly the listed names of ``flavour`` (``8.6``, ``10.3``, ``11.1``).

    Enums are real ``IntEnum``s (so ``1 << int(flag)`` works); classes carry their member names as attributes.
    """
    mod = ModuleType("tensorrt")
    mod.__version__ = version or VERSIONS[flavour]
    for name, members in ENUMS[flavour].items():
        setattr(mod, name, enum.IntEnum(name, members, start=0))
    for name, members in CLASSES[flavour].items():
        setattr(mod, name, type(name, (), dict.fromkeys(members)))
    for name in TOP_LEVEL[flavour]:
        setattr(mod, name, type(name, (), {}))
    return mod
