"""`bridgegan serve`: argument parsing; the work lives in ``server`` (tritonserver behind
the front; it imports only the standard library and torch-free modules of this package
until the command runs) and ``repo_python`` (the python-backend model repository it
serves), imported when the command runs."""
from __future__ import annotations

import argparse
import os
import shlex

from ..argtypes import int_between, non_negative_int, positive_float
from ..engine import options as engine_options
from ..engine.export.cli import TRITON_BATCH, TRITON_COUNT, add_queue_options
from ..engine.export.names import MAX_BATCH
from .names import (CLIENT_REQUESTS, EXIT_TIMEOUT_S, GRPC_PORT, HOST, HTTP_PORT, METRICS_PORT,
                    READ_TIMEOUT_S)

PORT = int_between(1, 65535)  # a TCP port to listen on


def _host(text: str) -> str:
    """An address to listen on, not empty (grpc and tritonserver read "" as no address)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give an address: 127.0.0.1, ::1, 0.0.0.0 (every "
                                         "interface)")
    return text


def run(args: argparse.Namespace) -> int:
    """Serve, write or run a model repository, as the options say."""
    if args.repository and (args.checkpoint or args.write_repository):
        raise ValueError("--repository serves a repository already written: give it alone, "
                         "or --checkpoint CKPT (with or without --write-repository DIR)")
    if args.repository and (changed := _not_default(args, REPOSITORY_DECIDES)):
        raise ValueError(f"{', '.join(changed)}: the repository's config.pbtxt files decide "
                         "these under --repository; write it again with them "
                         "(--checkpoint CKPT --write-repository DIR)")
    if not args.write_repository:
        from .server import listen_problem

        problem = listen_problem(args.host, {"--http-port": args.http_port, "--grpc-port":
                                             args.grpc_port, "--metrics-port": args.metrics_port})
        if problem:
            raise RuntimeError(problem)
    ports = dict(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                 metrics_port=args.metrics_port, exit_timeout_secs=args.exit_timeout_secs,
                 read_timeout_secs=args.read_timeout_secs,
                 max_client_requests=args.max_client_requests)
    if args.repository:
        from .server import run_tritonserver

        return run_tritonserver(args.repository, **ports)
    if not args.checkpoint:
        raise ValueError("give --checkpoint CKPT (serve it, or write a model repository "
                         "with --write-repository) or --repository DIR")
    from ..path_checks import check_apart, check_writable_folder
    from ..reference.checkpoint import read_config
    from .models import model_specs
    from .repo_python import write_python_repo
    from .request_checks import binary_limit
    from .server import check_shell_safe, import_pytriton, serve_checkpoint

    engine = (args.max_batch, args.max_queue_delay_us, args.device, args.backend, args.dtype,
              args.max_queue_size)
    if args.write_repository:
        check_writable_folder(args.write_repository, "--write-repository")
        check_apart(args.write_repository, "--write-repository",
                    [("--checkpoint", args.checkpoint)])
        check_shell_safe(args.write_repository, temp=False)  # what serve --repository refuses
    # before anything is written or started: the front would refuse it once the models loaded
    binary_limit({name: (spec, args.max_batch)
                  for name, spec in model_specs(read_config(args.checkpoint)).items()},
                 "--max-batch")
    if args.write_repository:
        folders = write_python_repo(args.checkpoint, args.write_repository, *engine)
        print(f"wrote {', '.join(f.name for f in folders)} to {args.write_repository}; serve "
              f"with: bridgegan serve --repository "
              f"{shlex.quote(os.path.abspath(args.write_repository))}")
        return 0
    import_pytriton()  # before writing anything: a missing extra fails fast
    check_engine_options(args.backend, args.dtype, args.device)
    return serve_checkpoint(args.checkpoint, *engine, **ports)


# the options a written repository fixes (config.pbtxt), which serve --repository cannot change
REPOSITORY_DECIDES = ("backend", "dtype", "device", "max_batch", "max_queue_delay_us",
                      "max_queue_size")


def _not_default(args: argparse.Namespace, names) -> list[str]:
    """The options of ``names`` given other values than their defaults, as flags (dtypes
    by name: fp32 is float32). A value equal to its default cannot be told from none:
    argparse fills defaults in."""
    from ..numerics import dtype_name

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def value(name, v):
        return dtype_name(v) if name == "dtype" else v

    return ["--" + n.replace("_", "-") for n in names
            if value(n, getattr(args, n)) != value(n, parser.get_default(n))]


def check_engine_options(backend: str, dtype: str, device: str) -> None:
    """Fail now, with the engine's message, on options the python-backend stubs would
    fail to load with only after tritonserver has started."""
    from ..engine.backends import check_backend
    from ..engine.placement import backend_dtype, engine_device

    dev = engine_device(device)  # the engine's own refusal of CUDA that torch cannot see
    check_backend(backend, dev, backend_dtype(backend, dtype, dev))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the serving options to ``p``."""
    p.add_argument("--checkpoint", help="checkpoint folder to serve")
    engine_options.add_options(p)
    p.add_argument("--max-batch", type=TRITON_BATCH, default=MAX_BATCH,
                   help="largest batch Triton forms and accepts, >= 1 (default: %(default)s)")
    add_queue_options(p)
    p.add_argument("--host", type=_host, default=HOST,
                   help="address to bind (default: %(default)s; 0.0.0.0 for every interface)")
    p.add_argument("--http-port", type=PORT, default=HTTP_PORT,
                   help="the front's HTTP port (default: %(default)s)")
    p.add_argument("--grpc-port", type=PORT, default=GRPC_PORT,
                   help="the front's gRPC port (default: %(default)s)")
    p.add_argument("--metrics-port", type=PORT, default=METRICS_PORT,
                   help="tritonserver's metrics port (default: %(default)s)")
    p.add_argument("--exit-timeout-secs", type=TRITON_COUNT, default=EXIT_TIMEOUT_S,
                   help="how long shutdown waits for in-flight requests and open clients "
                        "(the front), then again for tritonserver to finish its requests and "
                        "unload the models: up to about twice this in all "
                        "(default: %(default)s)")
    p.add_argument("--read-timeout-secs", type=positive_float, default=READ_TIMEOUT_S,
                   help="how long an HTTP client may take to send a request's header, then "
                        "its body, then to take the response: a late header closes the "
                        "connection (idle connections too), a late body gets 408, a response "
                        "not taken resets it; gRPC: the time for a request message, and the "
                        "age at which connections are renewed (default: %(default)s)")
    p.add_argument("--max-client-requests", type=non_negative_int, default=CLIENT_REQUESTS,
                   help="requests one client address may have in hand at once, HTTP and gRPC "
                        "together (more are refused: HTTP 503, gRPC RESOURCE_EXHAUSTED), and "
                        "4 times as many HTTP connections; 0: no limit, for a front behind a "
                        "proxy, where every client has the proxy's address (limit clients "
                        "there) (default: %(default)s)")
    p.add_argument("--write-repository", metavar="DIR",
                   help="write a python-backend model repository of --checkpoint to DIR and "
                        "exit (--device cuda: GPU instances)")
    p.add_argument("--repository", metavar="DIR",
                   help="serve this python-backend model repository (written by "
                        "--write-repository) instead of --checkpoint; its config.pbtxt "
                        "files decide device, backend, dtype and batching. tritonserver runs "
                        "each model's 1/model.py: serve only repositories you trust, as you "
                        "would run their code")
