"""``bridgegan serve``: the engine behind Triton Inference Server through PyTriton.

PyTriton (``pip install 'bridgegan[serve]'``) starts the tritonserver binary it bundles
and binds one Python function per model (``models.MODELS``) with dynamic batching: Triton
queues requests up to ``max_queue_delay_us`` and hands the function up to ``max_batch``
rows at once; requests batch together when they carry the same optional inputs.

Errors: Triton itself answers requests of the wrong shape, dtype, attribute count or batch
size. Content errors (NaN / Inf, values outside [-1, 1]) are found here; PyTriton answers
a batch with a single error, so a batch holding an invalid request fails as a whole with a
message that names the invalid request(s); the python-backend model repository
(``repo_python``) answers each request separately.
"""
from __future__ import annotations

import os
import signal
import sys
import sysconfig

from .models import NUMPY_TYPES, model_specs, run_requests

EXTRA_HINT = "pip install 'bridgegan[serve]' (nvidia-pytriton 0.7 needs numpy<2; the extra pins it)"


def import_pytriton():
    """The pytriton module, or a RuntimeError naming the extra to install."""
    try:
        import pytriton.triton
    except ImportError as exc:
        raise RuntimeError(f"serving needs nvidia-pytriton ({exc}): {EXTRA_HINT}") from None
    return pytriton


def prefer_own_libpython(env: dict | None = None) -> dict:
    """Put this interpreter's LIBDIR first in LD_LIBRARY_PATH (in ``env``, default
    os.environ): Triton's python-backend stub links libpython dynamically and would
    otherwise pick up a system libpython of another patch version."""
    env = os.environ if env is None else env
    libdir = sysconfig.get_config_var("LIBDIR")
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    env["LD_LIBRARY_PATH"] = ":".join([libdir, *rest])
    return env


class BatchError(ValueError):
    """Some requests of a batch were invalid (PyTriton answers a batch with one error)."""


def infer_function(engine, name: str):
    """PyTriton infer function of model ``name``: a list of requests in, one output dict
    per request out."""
    def infer(requests):
        results = run_requests(engine, name, [r.data for r in requests])
        bad = [f"request {i + 1} of {len(results)}: {r}" for i, r in enumerate(results)
               if isinstance(r, Exception)]
        if bad:
            others = ("" if len(bad) == len(results) else
                      "; the valid requests batched with it were not run: resend them")
            raise BatchError(f"{name}: invalid input: {'; '.join(bad)}{others}")
        return results
    return infer


def serve(engine, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, max_batch: int = 64, max_queue_delay_us: int = 1000,
          exit_timeout_secs: int = 30) -> None:
    """Serve ``engine`` until SIGINT / SIGTERM. Binds ``host`` only (loopback by default).
    The statistics endpoint is open (batch sizes, queue times); model control, shared
    memory, trace and logging need PyTriton's access token."""
    import_pytriton()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import (DEFAULT_PROTECTED_ENDPOINTS, Triton, TritonConfig,
                                 TritonSecurityConfig)

    prefer_own_libpython()
    config = TritonConfig(http_address=host, http_port=http_port, grpc_address=host,
                          grpc_port=grpc_port, metrics_address=host, metrics_port=metrics_port,
                          exit_timeout_secs=exit_timeout_secs)
    security = TritonSecurityConfig(restricted_endpoints=[
        e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
    batching = ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
        max_queue_delay_microseconds=max_queue_delay_us))

    def tensors(ports):
        return [Tensor(name=p.name, dtype=NUMPY_TYPES[p.dtype], shape=p.shape,
                       optional=p.optional) for p in ports]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave the `with` cleanly
    with Triton(config=config, security_config=security) as triton:
        specs = model_specs(engine.config)
        for spec in specs.values():
            triton.bind(model_name=spec.name, infer_func=infer_function(engine, spec.name),
                        inputs=tensors(spec.inputs), outputs=tensors(spec.outputs),
                        config=batching, strict=False)
        triton.run()
        print(f"serving {', '.join(specs)} on http://{host}:{http_port} and grpc "
              f"{host}:{grpc_port} (max batch {max_batch}, queue delay {max_queue_delay_us} us; "
              f"attributes: {', '.join(engine.attributes)})", flush=True)
        triton.serve()
