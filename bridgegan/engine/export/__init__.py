"""Export of the inference graph: ONNX (and the engine's onnxruntime backend), TensorRT
plans (and the engine's tensorrt backend), Triton Inference Server model repositories.

Modules: ``names`` (what can be exported, torch-free), ``onnx_export`` (graphs, export
folders, onnxruntime stages), ``tensorrt_build``
(build configuration as data, plan builder), ``trt_runtime`` (plan runner, sidecar
checks, tensorrt stages), ``triton_repo`` (model repository), ``cli`` (`bridgegan export`).
Heavy dependencies (onnx, onnxruntime, tensorrt) are imported where they are used.
"""
