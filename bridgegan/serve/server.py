"""``bridgegan serve``: the engine behind Triton Inference Server through PyTriton.

PyTriton (``pip install 'bridgegan[serve]'``) starts the tritonserver binary it bundles
and binds one Python function per model (``models.MODELS``) with dynamic batching: Triton
queues requests up to ``max_queue_delay_us`` and hands the function up to ``max_batch``
rows at once; requests batch together when they carry the same optional inputs.

Clients reach tritonserver through the front (``front``), which checks each request on
its own (size, declarations, values) before it can join a batch: PyTriton answers a batch
with one error, so an invalid request must not get that far.
"""
from __future__ import annotations

import os
import signal
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


def infer_function(engine, name: str):
    """PyTriton infer function of model ``name``: a list of requests in, one output dict
    per request out. The front checked each request already; one that fails here (sent to
    the private port directly) fails its batch, as PyTriton answers a batch with one error."""
    def infer(requests):
        results = run_requests(engine, name, [r.data for r in requests])
        bad = [f"request {i + 1} of {len(results)}: {r}" for i, r in enumerate(results)
               if isinstance(r, Exception)]
        if bad:
            raise ValueError(f"{name}: invalid input: {'; '.join(bad)}")
        return results
    return infer


def serve(engine, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, max_batch: int = 64, max_queue_delay_us: int = 1000,
          exit_timeout_secs: int = 30) -> None:
    """Serve ``engine`` until SIGINT / SIGTERM: tritonserver (PyTriton) on private loopback
    ports behind the front (``front``) on ``host``'s ports (loopback by default); metrics
    on ``host``. No access token: logging, trace, shared memory and model control are off
    (``_private_triton``), the models load from PyTriton's local model store."""
    import_pytriton()
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonLifecyclePolicy, TritonSecurityConfig

    from .front import Front, fetch_specs
    from .process import free_ports

    prefer_own_libpython()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # startup: leave cleanly
    private_http, private_grpc = free_ports(2)
    config = TritonConfig(http_address="127.0.0.1", http_port=private_http,
                          grpc_address="127.0.0.1", grpc_port=private_grpc,
                          metrics_address=host, metrics_port=metrics_port,
                          exit_timeout_secs=exit_timeout_secs, strict_readiness=False)
    batching = ModelConfig(max_batch_size=max_batch, batcher=DynamicBatcher(
        max_queue_delay_microseconds=max_queue_delay_us))

    def tensors(ports):
        return [Tensor(name=p.name, dtype=NUMPY_TYPES[p.dtype], shape=p.shape,
                       optional=p.optional) for p in ports]

    with _private_triton(Triton)(
            config=config, security_config=TritonSecurityConfig(restricted_endpoints=[]),
            triton_lifecycle_policy=TritonLifecyclePolicy(launch_triton_on_startup=False,
                                                          local_model_store=True)) as triton:
        specs = model_specs(engine.config)
        for spec in specs.values():
            triton.bind(model_name=spec.name, infer_func=infer_function(engine, spec.name),
                        inputs=tensors(spec.inputs), outputs=tensors(spec.outputs),
                        config=batching, strict=False)
        triton.run()
        private = f"127.0.0.1:{private_http}"
        with Front(fetch_specs(private), private, f"127.0.0.1:{private_grpc}", host,
                   http_port, grpc_port) as front:
            stop_on_signals(front)
            print(f"serving {', '.join(specs)} on http://{host}:{http_port} and grpc "
                  f"{host}:{grpc_port} (max batch {max_batch}, queue delay "
                  f"{max_queue_delay_us} us; attributes: {', '.join(engine.attributes)})",
                  flush=True)
            triton.serve()


def _private_triton(triton_class):
    """PyTriton's Triton class with logging, trace, shared memory and model control off
    (``restricted_off``, added to tritonserver's arguments as they are: PyTriton's own
    option handling splits values at white space) and without its start-up check of the
    log level, which reads the logging endpoint. Relies on nvidia-pytriton 0.7 internals
    (``_triton_server_config``, ``_log_level_checker``), hence the pin in the extra."""
    class NoCheck:
        def check(self, skip_update: bool = False) -> None:
            pass

    class Triton(triton_class):
        def _initialize_server(self) -> None:
            super()._initialize_server()
            self._log_level_checker = NoCheck()
            config, args = self._triton_server_config, self._triton_server_config.to_args_list
            off = restricted_off()
            config.to_args_list = lambda: [*args(), "--http-restricted-api", off,
                                           "--grpc-restricted-protocol", off]

    return Triton


def restricted_off() -> str:
    """tritonserver's --http-restricted-api / --grpc-restricted-protocol value that turns
    logging, trace, shared memory and model control off: 2.51 has no flag to disable them,
    and a token would be on its command line, readable by every local user. They are
    restricted to a header name with a line break, which no HTTP or gRPC client can send."""
    return "logging,trace,shared-memory,model-repository:disabled\nby-bridgegan=-"


def stop_on_signals(front) -> None:
    """On SIGINT / SIGTERM: close the front (no new requests; those in flight finish), then
    stop the server (KeyboardInterrupt, which PyTriton's serve loop handles)."""
    def stop(*_):
        front.close()
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
