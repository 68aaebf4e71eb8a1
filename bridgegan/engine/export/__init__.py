"""Export of the inference graph: artefacts only. ONNX graphs and export folders, TensorRT
plans and their sidecars, Triton Inference Server model repositories; the runtimes that
run them are engine backends (``engine.backends.onnxruntime``, ``.tensorrt``).

Modules: ``names`` (what can be exported, a Triton repository's batching defaults;
torch-free), ``onnx_export`` (graphs, export folders), ``tensorrt_build`` (build
configuration as data, plan builder, sidecar checks), ``triton_repo`` (model repository),
``pbtxt`` (config.pbtxt text, also for the python-backend repository of ``serve``), ``cli``
(`bridgegan export`), ``cache`` (`bridgegan cache`: the export cache's folders). Heavy
dependencies (onnx, tensorrt) are imported where they are used.
"""
