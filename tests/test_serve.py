"""Serving: the batch runner against the engine (in process), the python-backend model
repository (files, and its model class on a stand-in of Triton's module), then for real on
loopback: `bridgegan serve --checkpoint` over HTTP and gRPC, dynamic batching, bad
requests, a bounded load, hostile traffic, shutdown, and `serve --repository` on a
repository written before.

The server tests need the serve extra (nvidia-pytriton, tritonclient; numpy<2), which CI's
environment does not install: they skip there, naming the missing package."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from bridgegan.cli import main
from bridgegan.engine import Engine
from bridgegan.numerics import tolerance
from bridgegan.reference import BridgeGAN, save_checkpoint
from bridgegan.serve.models import MODELS, model_specs, run_requests
from conftest import images, labels, randomize, small_config

ATOL = tolerance("float32").image_max_abs
MISSING = [pkg for module, pkg in (("pytriton", "nvidia-pytriton"),
                                   ("tritonclient", "tritonclient"))
           if importlib.util.find_spec(module) is None]
needs_serve = pytest.mark.skipif(bool(MISSING), reason=f"needs {' and '.join(MISSING)}: pip "
                                 "install 'bridgegan[serve]' (it pins numpy<2)")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(4)
    return randomize(BridgeGAN(small_config(32)), seed=4).eval()


@pytest.fixture(scope="module")
def engine(model):
    return Engine(model, backend="torch")


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "ck", model)


def noise(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def close(got: np.ndarray, want: torch.Tensor) -> bool:
    return got.shape == tuple(want.shape) and np.abs(got - want.numpy()).max() <= ATOL


def cases(engine) -> list[tuple[str, dict, torch.Tensor]]:
    """(model, request inputs, the engine's own output) for every model and input mix."""
    x, ref, ys, yt = images(3, 32, 1), images(3, 32, 2), labels(3, 6, 1), labels(3, 6, 2)
    r = noise(3, 3)
    mask = np.zeros((3, 6), bool)
    mask[:, [1, 3]] = True
    return [
        ("translate_label", {"image": x, "target": yt, "noise": r, "source": ys},
         engine.translate(x, yt, noise=r, source=ys)),
        ("translate_label", {"image": x, "target": yt, "noise": r,
                             "strength": torch.full((3, 1), 0.75)},
         engine.translate(x, yt, noise=r, strength=0.75)),
        ("translate_reference", {"image": x, "reference": ref, "source": ys},
         engine.translate_reference(x, ref, source=ys)),
        ("translate_reference", {"image": x, "reference": ref, "attributes": mask,
                                 "strength": torch.full((3, 1), 2.0)},
         engine.translate_reference(x, ref, attributes=["Blond_Hair", "Male"], strength=2.0)),
        ("reconstruct", {"image": x, "noise": r}, engine.reconstruct(x, noise=r)),
    ]


def as_numpy(inputs: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in inputs.items()}


# ----------------------------------------------------------------------------- in process

def test_batches_of_requests_match_the_engine(engine):
    for name, inputs, want in cases(engine):
        got = run_requests(engine, name, [as_numpy(inputs)])[0]["output"]
        assert close(got, want), name
    # one batch mixing requests: with and without source labels, several strengths, masks
    label, strength = cases(engine)[0][1], cases(engine)[1][1]
    split = [{k: v[i:i + 1] for k, v in as_numpy(label).items()} for i in range(3)]
    split[1].pop("source")
    got = run_requests(engine, "translate_label", [*split, as_numpy(strength)])
    x, yt, r, ys = (label[k] for k in ("image", "target", "noise", "source"))
    for i in (0, 2):
        assert close(got[i]["output"], engine.translate(x[i:i + 1], yt[i:i + 1], noise=r[i:i + 1],
                                                        source=ys[i:i + 1]))
    assert close(got[1]["output"], engine.translate(x[1:2], yt[1:2], noise=r[1:2]))
    assert close(got[3]["output"], cases(engine)[1][2])
    refs = [as_numpy(c[1]) for c in cases(engine) if c[0] == "translate_reference"]
    got = run_requests(engine, "translate_reference", refs)
    assert all(close(g["output"], c[2]) for g, c in zip(got, cases(engine)[2:4]))


def test_bad_requests_fail_alone(engine):
    x, t = images(1, 32, 5).numpy(), labels(1, 6, 5).numpy()
    nan = x.copy()
    nan[0, 1, 2, 3] = np.nan
    bad = [({"image": nan, "target": t}, "image: contain NaN or Inf"),
           ({"image": 2 * x, "target": t}, r"values must lie in \[-1, 1\]"),
           ({"image": x, "target": np.full_like(t, np.inf)}, "'target' contains NaN or Inf"),
           ({"image": x, "target": np.ones((1, 7), np.float32)},
            r"'target' must have shape \(N, 6\)"),
           ({"image": x[:, :, :16, :16], "target": t}, r"'image' must have shape \(N, 3, 32, 32\)"),
           ({"image": x}, "missing input 'target'"),
           ({"image": x, "target": t, "seed": t}, "unknown input"),
           ({"image": np.concatenate([x, x]), "target": t}, "'target' has 1 rows, the others 2"),
           ({"image": x[:0], "target": t[:0]}, "image: empty batch")]
    good = {"image": x, "target": t, "noise": noise(1, 5).numpy()}
    results = run_requests(engine, "translate_label", [good, *(b for b, _ in bad), good])
    for (_, message), got in zip(bad, results[1:-1]):
        assert isinstance(got, ValueError)
        assert re.search(message, str(got)), (message, got)
    want = engine.translate(torch.from_numpy(x), torch.from_numpy(t), noise=noise(1, 5))
    assert close(results[0]["output"], want) and close(results[-1]["output"], want)


def parse_pbtxt_ports(text: str, kind: str) -> list[tuple]:
    block = re.search(kind + r" \[\n(.*?)\n\]", text, re.S).group(1)
    return re.findall(r'name: "(\w+)"\s+data_type: TYPE_(\w+)\s+dims: \[ ([\d, ]*) \]'
                      r'(\s+optional: true)?', block)


def test_python_backend_repository(ckpt, engine, tmp_path):
    repo = tmp_path / "repo"
    assert main(["serve", "--checkpoint", str(ckpt), "--write-repository", str(repo),
                 "--max-batch", "16", "--max-queue-delay-us", "500"]) == 0
    assert sorted(p.name for p in repo.iterdir()) == sorted(MODELS)
    specs = model_specs(engine.config)
    weights = []
    for name in MODELS:
        folder = repo / name
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
            "1/checkpoint/config.json", "1/checkpoint/model.safetensors", "1/model.py",
            "bridgegan.json", "config.pbtxt"]
        text = (folder / "config.pbtxt").read_text()
        assert f'name: "{name}"\nbackend: "python"\nmax_batch_size: 16\n' in text
        assert "max_queue_delay_microseconds: 500" in text and "kind: KIND_CPU" in text
        ports = [(p.name, p.dtype, ", ".join(map(str, p.shape)), bool(p.optional))
                 for p in specs[name].inputs]
        assert [(n, t, d, bool(o)) for n, t, d, o in parse_pbtxt_ports(text, "input")] == ports
        assert parse_pbtxt_ports(text, "output") == [("output", "FP32", "3, 32, 32", "")]
        assert "TritonPythonModel" in (folder / "1/model.py").read_text()
        meta = json.loads((folder / "bridgegan.json").read_text())
        assert meta["attributes"] == list(engine.attributes) and meta["model"] == name
        data = (folder / "1/checkpoint/model.safetensors")
        assert data.read_bytes() == (ckpt / "model.safetensors").read_bytes()
        weights.append(data.stat().st_ino)
    assert len(set(weights)) == 1  # one copy, hard-linked
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N"):
        from bridgegan.serve.repo_python import write_python_repo

        write_python_repo(ckpt, tmp_path / "x", device="tpu")


class FakeTritonUtils(types.ModuleType):
    """The parts of triton_python_backend_utils that the model class uses."""

    class TritonError(Exception):
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

    class Tensor:
        def __init__(self, name, value):
            self.name, self.value = name, value

        def as_numpy(self):
            return self.value

    class InferenceResponse:
        def __init__(self, output_tensors=(), error=None):
            self.outputs, self.error = {t.name: t.value for t in output_tensors}, error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.get(name)


def test_python_backend_model_class(ckpt, engine, tmp_path, monkeypatch):
    from bridgegan.serve.repo_python import TritonPythonModel

    pb = FakeTritonUtils("triton_python_backend_utils")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    repo = tmp_path / "repo"
    main(["serve", "--checkpoint", str(ckpt), "--write-repository", str(repo)])
    for name, inputs, want in cases(engine):
        m = TritonPythonModel()
        m.initialize({"model_config": json.dumps({"parameters": {
            "engine_backend": {"string_value": "torch"}}}), "model_repository": str(repo / name),
            "model_version": "1", "model_name": name, "model_instance_kind": "CPU",
            "model_instance_device_id": "0"})
        assert m.engine.backend == "torch"
        bad = {**as_numpy(inputs), "image": np.full((3, 3, 32, 32), np.nan, np.float32)}
        responses = m.execute([{k: pb.Tensor(k, v) for k, v in r.items()}
                               for r in (as_numpy(inputs), bad)])
        assert responses[0].error is None and close(responses[0].outputs["output"], want)
        assert responses[1].error.code == pb.TritonError.INVALID_ARG
        assert str(responses[1].error) == f"{name}: invalid input: image: contain NaN or Inf values"


@needs_serve
@pytest.mark.parametrize("options, message", [
    (["--dtype", "fp8"], "unknown dtype 'fp8'"),
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N"),
    (["--backend", "tensorrt"], "backend 'tensorrt' needs"),
    (["--backend", "onnxruntime", "--dtype", "bf16"], "onnxruntime"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]))
def test_bad_engine_options_fail_before_the_server_starts(ckpt, capsys, options, message):
    assert main(["serve", "--checkpoint", str(ckpt), "--http-port", "0", "--grpc-port", "0",
                 "--metrics-port", "0", *options]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not MISSING, reason="checks the message shown without the serve extra")
def test_missing_extra_is_named(ckpt, capsys):
    assert main(["serve", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "nvidia-pytriton" in err and "bridgegan[serve]" in err


# ------------------------------------------------------------------------ real servers

def client_module(protocol: str):
    if protocol == "http":
        import tritonclient.http as mod
    else:
        import tritonclient.grpc as mod
    return mod


def infer(server, protocol: str, model: str, inputs: dict) -> np.ndarray:
    """One request over ``protocol``; raises tritonclient's InferenceServerException."""
    from tritonclient.utils import np_to_triton_dtype

    mod = client_module(protocol)
    client = mod.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    try:
        ports = []
        for name, value in as_numpy(inputs).items():
            ports.append(mod.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype)))
            ports[-1].set_data_from_numpy(value)
        return client.infer(model, ports).as_numpy("output")
    finally:
        client.close()


def server_stats(server, model: str) -> dict:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http)
    try:
        s = client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()
    return {"inferences": int(s["inference_count"]), "executions": int(s["execution_count"]),
            "batches": {int(b["batch_size"]): int(b["compute_infer"]["count"])
                        for b in s["batch_stats"]}}


@pytest.fixture(scope="module")
def served(ckpt, tmp_path_factory):
    from bridgegan.serve.process import ServerProcess

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with ServerProcess(["--checkpoint", str(ckpt), "--max-batch", "8", "--max-queue-delay-us",
                        "20000", "--exit-timeout-secs", "10"], log) as server:
        yield server


@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_served_outputs_are_the_engines(served, engine, protocol):
    for name, inputs, want in cases(engine):
        assert close(infer(served, protocol, name, inputs), want), name


def concurrent_vs_serial(server, engine, n: int = 12) -> dict:
    """``n`` single-image label requests sent at once, then one by one: both equal the
    engine's outputs. Returns the server's statistics delta of the concurrent phase."""
    x, yt, r = images(n, 32, 7), labels(n, 6, 7), noise(n, 7)
    want = engine.translate(x, yt, noise=r)
    one = [{"image": x[i:i + 1], "target": yt[i:i + 1], "noise": r[i:i + 1]} for i in range(n)]
    before = server_stats(server, "translate_label")
    start = threading.Barrier(n)

    def send(i):
        start.wait()
        return infer(server, "http" if i % 2 else "grpc", "translate_label", one[i])

    with ThreadPoolExecutor(n) as pool:
        concurrent = list(pool.map(send, range(n)))
    after = server_stats(server, "translate_label")
    serial = [infer(server, "http", "translate_label", req) for req in one]
    for i in range(n):
        assert close(concurrent[i], want[i:i + 1]) and close(serial[i], want[i:i + 1])
        assert np.abs(concurrent[i] - serial[i]).max() <= ATOL
    return {"inferences": after["inferences"] - before["inferences"],
            "executions": after["executions"] - before["executions"],
            "batched": {b: c - before["batches"].get(b, 0) for b, c in after["batches"].items()
                        if b > 1 and c > before["batches"].get(b, 0)}}


@needs_serve
def test_dynamic_batching(served, engine):
    delta = concurrent_vs_serial(served, engine)
    assert delta["inferences"] == 12
    assert delta["executions"] < 12 and delta["batched"], delta  # batches of 2+ images ran


@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_clear_errors(served, engine, protocol):
    from tritonclient.utils import InferenceServerException

    x, t = images(1, 32, 9), labels(1, 6, 9)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    bad = [({"image": x[..., :16, :16], "target": t},
            "input 'image' must have shape [N, 3, 32, 32] with 1 <= N <= 8, got [1, 3, 16, 16]"),
           ({"image": x, "target": torch.ones(1, 7)}, "input 'target' must have shape [N, 6]"),
           ({"image": nan, "target": t}, "image: contain NaN or Inf values"),
           ({"image": 3 * x, "target": t}, "values must lie in [-1, 1]"),
           ({"image": x, "target": 0.5 * t}, "'target' must hold 0 (absent) or 1 (present)"),
           ({"image": x.expand(9, -1, -1, -1), "target": t.expand(9, -1)},
            "with 1 <= N <= 8, got [9, 3, 32, 32]"),
           ({"image": x}, "missing input(s) target")]
    good = {"image": x, "target": t, "noise": noise(1, 9)}
    want = engine.translate(x, t, noise=noise(1, 9))
    for inputs, message in bad:
        with pytest.raises(InferenceServerException) as err:
            infer(served, protocol, "translate_label", inputs)
        assert message in str(err.value), str(err.value)
        assert "Traceback" not in str(err.value) and ".py" not in str(err.value)
        assert close(infer(served, protocol, "translate_label", good), want)


def load_module():
    """benchmarks/load_serve.py as a module."""
    spec = importlib.util.spec_from_file_location(
        "load_serve", Path(__file__).parents[1] / "benchmarks" / "load_serve.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    return load


@needs_serve
def test_bounded_load(served):
    load = load_module()
    for protocol in ("http", "grpc"):
        result = load.run_load(served.http, served.grpc, protocol=protocol,
                               concurrency=4, max_requests=24, duration=60)
        assert result["errors"] == 0, result["first_error"]
        assert result["requests"] == 24


def bundled_tritonserver_problem() -> str | None:
    """Why PyTriton's bundled tritonserver cannot start here, or None."""
    from bridgegan.serve.server import tritonserver_command

    with tempfile.TemporaryDirectory() as tmp:
        argv, env = tritonserver_command(tmp, tmp)
        try:
            out = subprocess.run([argv[0], "--help"], env=env, capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
    text = out.stdout + out.stderr
    return None if "--model-repository" in text else text[-500:]


@needs_serve
def test_plain_tritonserver_on_the_python_backend_repository(ckpt, engine, tmp_path):
    from bridgegan.serve.process import ServerProcess
    from tritonclient.utils import InferenceServerException

    problem = bundled_tritonserver_problem()
    if problem:
        pytest.skip(f"the bundled tritonserver cannot start here: {problem}")
    repo = tmp_path / "repo"
    assert main(["serve", "--checkpoint", str(ckpt), "--write-repository", str(repo),
                 "--max-batch", "8", "--max-queue-delay-us", "20000"]) == 0
    with ServerProcess(["--repository", str(repo), "--exit-timeout-secs", "10"],
                       tmp_path / "tritonserver.log") as server:
        for protocol in ("http", "grpc"):
            for name, inputs, want in cases(engine):
                assert close(infer(server, protocol, name, inputs), want), (protocol, name)
        restricted_endpoints_off(server)


# ------------------------------------------------------------------- hostile traffic

MEMORY_BOUND = 64 * 2**20  # growth of the server tree's RSS allowed while refusing
SHUTDOWN_BOUND = 10.0  # seconds from SIGTERM under load to exit


def invalid_batched_with_valid(server, engine, protocol: str) -> None:
    """Six single-image requests at once, the 4th with a NaN and the 5th with labels of
    0.5: those two get their own errors, the others the engine's results."""
    from tritonclient.utils import InferenceServerException

    x, t = images(6, 32, 11), labels(6, 6, 11)
    x[3, 0, 0, 0] = float("nan")
    t[4, 0] = 0.5
    start = threading.Barrier(6)

    def send(i):
        start.wait()
        try:
            return infer(server, protocol, "translate_label",
                         {"image": x[i:i + 1], "target": t[i:i + 1], "noise": noise(1, i)})
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(send, range(6)))
    assert "translate_label: invalid input: image: contain NaN" in str(got[3]), got[3]
    assert "'target' must hold 0 (absent) or 1 (present)" in str(got[4]), got[4]
    for i in (0, 1, 2, 5):
        assert close(got[i], engine.translate(x[i:i + 1], t[i:i + 1], noise=noise(1, i))), got[i]


@needs_serve
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_invalid_requests_fail_alone_in_their_batch(served, engine, protocol):
    invalid_batched_with_valid(served, engine, protocol)


def hostile_requests_refused(server) -> None:
    """Each hostile kind of load_serve, over HTTP and gRPC, plus a body declared 10 GB long
    and a gRPC message over the limit: refused with a message naming the problem (no
    traceback, no path) while the server tree's RSS grows by less than MEMORY_BOUND."""
    import socket

    import grpc
    from tritonclient.grpc import service_pb2

    load = load_module()
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    expected = {"nan": "contain NaN or Inf", "shape": "must have shape [N, 3, 32, 32]",
                "oversize": "with 1 <= N <= 8, got [16, 3, 8192, 8192]",
                "garbage": "must be a JSON inference request|not a ModelInferRequest|unknown"}
    ports = load.model_inputs(server.http, "translate_label")
    rng = np.random.default_rng(0)
    base = server.rss()
    with load.PeakMemory(server) as peak:
        for mod, url in ((httpclient, server.http), (grpcclient, server.grpc)):
            client = mod.InferenceServerClient(url)
            for kind in load.HOSTILE_KINDS:
                got = load.send_hostile(kind, client, mod, url, "translate_label", ports, rng)
                assert any(e in got for e in expected[kind].split("|")), (kind, got)
                assert "Traceback" not in got and ".py" not in got, got
            client.close()
        with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
            sock.sendall(b"POST /v2/models/translate_label/infer HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 10000000000\r\n\r\n{")
            assert sock.recv(200).startswith(b"HTTP/1.1 413")
        big = service_pb2.ModelInferRequest(model_name="translate_label",
                                            raw_input_contents=[bytes(2**22)])
        big.inputs.add(name="image", datatype="FP32", shape=[1, 3, 32, 32])
        with grpc.insecure_channel(server.grpc) as channel, pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                big.SerializeToString(), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert peak.bytes - base < MEMORY_BOUND, (base, peak.bytes)


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports that process ``pid`` listens on (its socket inodes in /proc/net/tcp*)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def restricted_endpoints_off(server) -> None:
    """No access token on any command line of the server's tree; tritonserver listens on
    no TCP port but metrics, its unix sockets lie in a folder only this user can enter;
    logging refused by the front (HTTP and gRPC) and by tritonserver's private socket."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from bridgegan.serve.http_client import http_get

    pids = server.pids()
    cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in pids}
    assert not any(b"token" in c for c in cmdlines.values())
    pid, triton = next((p, c) for p, c in cmdlines.items()
                       if c.split(b"\0")[0].endswith(b"/tritonserver"))
    assert listening_tcp_ports(pid) == {server.metrics_port}
    private = Path(re.search(rb"--http-address=unix:([^\0]+)", triton).group(1).decode())
    assert b"--grpc-address=unix:" + bytes(private.parent) in triton
    info = private.parent.stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700, oct(info.st_mode)
    for address in (server.http, private):
        assert http_get(address, "/v2/logging")[0] == 403, address
    client = grpcclient.InferenceServerClient(server.grpc)
    with pytest.raises(InferenceServerException, match="logging, trace, shared memory and model "
                                                       "control are off"):
        client.get_log_settings()
    client.close()


@needs_serve
def test_hostile_requests_refused_with_bounded_memory(served):
    hostile_requests_refused(served)
    restricted_endpoints_off(served)


@needs_serve
def test_shutdown_under_load_and_busy_port(ckpt, tmp_path):
    import signal
    import socket

    from bridgegan.serve.process import ServerProcess

    load = load_module()
    shm = set(Path("/dev/shm").iterdir())
    with ServerProcess(["--checkpoint", str(ckpt), "--max-batch", "8", "--max-queue-delay-us",
                        "20000", "--exit-timeout-secs", "10"], tmp_path / "serve.log") as server:
        def drive():  # the load's closing stats call finds the server gone, as it should
            with contextlib.suppress(urllib.error.URLError):
                load.run_load(server.http, server.grpc, concurrency=4, max_requests=10**6,
                              duration=15, hostile=0.5)

        loader = threading.Thread(target=drive)
        loader.start()
        time.sleep(4)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)
        seconds = time.monotonic() - t0
        loader.join()
    assert seconds < SHUTDOWN_BOUND, (seconds, server.log_tail())
    assert "Exit timeout expired" not in server.log_tail(20000)
    assert set(Path("/dev/shm").iterdir()) <= shm, set(Path("/dev/shm").iterdir()) - shm
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "bridgegan.cli", "serve", "--checkpoint",
                              str(ckpt), "--http-port", str(port)], capture_output=True,
                             text=True, timeout=120)
    assert out.returncode == 2 and f"--http-port {port} (Address already in use)" in out.stderr
    assert time.monotonic() - t0 < 30, out.stderr
