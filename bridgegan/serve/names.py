"""What `bridgegan serve` serves and its defaults: the models' names, the address, ports
and timeouts, and how a host and port are written. Torch-free and import-free, so that
``--help``, ``server`` (the standard library and torch-free modules until the command
runs) and the load benchmark read them without the engine."""

MODELS = ("translate_label", "translate_reference", "reconstruct")
HOST = "127.0.0.1"
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002
EXIT_TIMEOUT_S = 30  # default --exit-timeout-secs: shutdown's wait for in-flight requests
READ_TIMEOUT_S = 30.0  # default --read-timeout-secs: a client's time for a header, a body
# default --max-client-requests: the requests one client address may have in hand at once
# (HTTP and gRPC together; 4x as many HTTP connections); 0: no limit, behind a proxy
CLIENT_REQUESTS = 16


def host_port(host: str, port: int) -> str:
    """``HOST:PORT`` as grpc and URLs take it: an IPv6 host in brackets ("[::1]:8001")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
