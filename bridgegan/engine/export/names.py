"""What can be exported: the ONNX graphs, opset and precisions, the TensorRT plan
precisions, a Triton repository's batching defaults (``serve``'s python-backend one too).
Torch-free, so that `bridgegan export --help` and `bridgegan serve --help` list them
without importing the exporters."""

OPSET = 17
PROGRAMS = ("translate_label", "translate_reference")
STAGES = ("trunk", "encode", "map", "decode", "decode_mix")
HEADS = ("classify",)  # D's attribute head: float32 at every precision
GRAPHS = PROGRAMS + STAGES + HEADS
ONNX_PRECISIONS = {"fp32": "float32", "fp16": "float16"}  # name -> torch dtype name
TRITON_TYPES = {"float32": "FP32", "float16": "FP16"}  # a graph port's numpy dtype -> Triton's
TENSORRT_PRECISIONS = ("fp32", "fp16", "bf16")
TIMING_CACHE = "timing_{gpu}.cache"  # a GPU kind's TensorRT timing cache, beside the plans
PREFERRED_BATCHES = (4, 8, 16, 32)  # a Triton repository's default preferred batch sizes
MAX_BATCH = 64  # its default max_batch_size (and a TensorRT plan's default profile max)
QUEUE_DELAY_US = 1000  # its default dynamic batching queue delay
# the largest value of a config.pbtxt's int32 fields (max_batch_size, max_queue_size,
# preferred_batch_size) and of tritonserver's --exit-timeout-secs; Triton refuses more
TRITON_INT = 2**31 - 1
PLAN_BATCHES = (1, 8, MAX_BATCH)  # a TensorRT plan's default profile: (min, opt, max) batch
WORKSPACE_GB = 4.0  # a TensorRT build's default workspace memory pool limit
MAX_WORKSPACE_GB = 1024.0  # and the largest taken: more than any GPU's memory
