"""``bridgegan serve``: the tritonserver that nvidia-pytriton bundles, run plain on a
python-backend model repository (``repo_python``), behind the front (``front``).

``serve --checkpoint`` writes that repository into a private temporary folder first;
``serve --repository DIR`` runs on one written before. Each private folder holds a lock
file (``ALIVE``) that the front and tritonserver hold while they run: a server killed
outright (SIGKILL runs no cleanup) leaves its folders and, if tritonserver itself was
killed, its stubs' shared memory; the next start removes those whose lock nobody holds
(``sweep_leftovers``), whatever PID namespace they were made in (sharing this temp folder
and /dev/shm, under this user id). tritonserver listens only on unix
sockets in a folder of mode 0700, so no other local user can reach it past the front's
checks (on loopback TCP ports any local user could, with no size limit); its metrics stay
on ``--host``'s TCP port. The python backend runs the engine in its stub processes and
answers each request of a batch on its own.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ..exits import signal_status
from ..locks import held
from ..path_checks import shell_unsafe
from .names import (CLIENT_REQUESTS, EXIT_TIMEOUT_S, GRPC_PORT, HOST, HTTP_PORT, METRICS_PORT,
                    MODELS, READ_TIMEOUT_S, host_port)

EXTRA_HINT = "pip install 'bridgegan[serve]' (nvidia-pytriton 0.7 needs numpy<2; the extra pins it)"
# the private folders a server makes in the temp folder (its repository and sockets),
# named with the front's pid, and its stubs' shared-memory regions, named after the
# folder of its sockets (``shm_prefix``)
REPOSITORY_PREFIX = "bridgegan-serve-"
WORKDIR_PREFIX = "bridgegan-tritonserver-"
SHM_PREFIX = "bridgegan_serve_"
SHM_ROOT = Path("/dev/shm")
ALIVE = ".alive"  # a private folder's lock file, held (flock) while its server runs
_HELD: set[int] = set()  # this process's ALIVE locks, passed on to tritonserver
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)
HTTP_SOCKET = "http.sock"
GRPC_SOCKET = "grpc.sock"
UNIX_PORT = 1  # tritonserver wants a port beside a unix address; gRPC appends ":<port>" to it
SOCKET_PATH_MAX = 107  # sun_path on Linux, less the terminating NUL


def import_pytriton():
    """The pytriton module (it bundles tritonserver and the python-backend stubs), or a
    RuntimeError naming the extra to install."""
    try:
        import pytriton.utils.distribution
    except ImportError as exc:
        raise RuntimeError(f"serving needs nvidia-pytriton ({exc}): {EXTRA_HINT}") from None
    return pytriton


def prefer_own_libpython(env: dict) -> dict:
    """Put this interpreter's LIBDIR first in ``env``'s LD_LIBRARY_PATH: Triton's
    python-backend stub links libpython dynamically and would otherwise pick up a system
    libpython of another patch version."""
    libdir = sysconfig.get_config_var("LIBDIR")
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    env["LD_LIBRARY_PATH"] = ":".join([libdir, *rest])
    return env


def restricted_off() -> str:
    """tritonserver's --http-restricted-api / --grpc-restricted-protocol value that turns
    logging, trace, shared memory and model control off: 2.51 has no flag to disable them,
    and a token would be on its command line, readable by every local user. They are
    restricted to a header name with a line break, which no HTTP or gRPC client can send."""
    return "logging,trace,shared-memory,model-repository:disabled\nby-bridgegan=-"


def private_sockets(folder: str | os.PathLike) -> tuple[Path, str]:
    """tritonserver's HTTP socket path and gRPC target inside ``folder``."""
    http, grpc = Path(folder) / HTTP_SOCKET, f"{Path(folder) / GRPC_SOCKET}:{UNIX_PORT}"
    if len(os.fsencode(grpc)) > SOCKET_PATH_MAX:
        raise ValueError(f"the socket path {grpc} is longer than {SOCKET_PATH_MAX} bytes; "
                         "set TMPDIR to a shorter folder")
    return http, f"unix:{grpc}"


def check_shell_safe(repository: str | os.PathLike | None = None, temp: bool = True) -> None:
    """Refuse (ValueError) a temp folder (the private folders' place; where ``temp``) or
    model repository whose path a shell would split or expand: Triton's python backend
    starts each model through an unquoted shell command line holding them, and
    tritonserver then waits for models that never start."""
    places = []
    if temp:
        places.append(("the temp folder", tempfile.gettempdir(), "set TMPDIR to a plain path"))
    if repository is not None:
        places.append(("the model repository", os.path.abspath(repository),
                       "give it another path"))
    for what, path, fix in places:
        bad = shell_unsafe(path)
        if bad:
            raise ValueError(f"{what} {path!r} holds {bad!r}, which Triton's python backend "
                             f"cannot pass to its model processes (it starts them through a "
                             f"shell that splits or expands it): {fix} (no spaces, quotes or "
                             f"shell characters)")


def listen_problem(host: str, ports: dict[str, int]) -> str | None:
    """Why the server could not listen on ``ports`` (flag: port) at ``host``, as an error
    message, or None: checked before starting (tritonserver and the front would fail to
    bind only once the models had loaded): one port given twice, a host that is no address
    of this machine, ports something already listens on."""
    by_port: dict[int, list[str]] = {}
    for flag, port in ports.items():
        by_port.setdefault(port, []).append(flag)
    for port, flags in by_port.items():
        if len(flags) > 1:
            return f"{', '.join(flags)}: {port} each; give each its own port"
    busy = []
    for flag, port in ports.items():
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT: not busy
                s.bind((host, port))
        except socket.gaierror as exc:
            return f"--host {host}: not an address ({exc.strerror})"
        except OSError as exc:
            if exc.errno == errno.EACCES:
                return (f"{flag} {port}: not allowed ({exc.strerror}): ports below 1024 need "
                        f"privileges; choose another")
            if exc.errno != errno.EADDRINUSE:
                return (f"--host {host}: cannot listen there ({exc.strerror}); give an address "
                        f"of this machine (0.0.0.0: every interface)")
            busy.append(f"{flag} {port} ({exc.strerror})")
    return (f"cannot listen on {host}: {', '.join(busy)}; stop what holds the port or choose "
            f"another" if busy else None)


def tritonserver_command(repository: str | os.PathLike, workdir: str | os.PathLike,
                         metrics_host: str = HOST, metrics_port: int = METRICS_PORT,
                         exit_timeout_secs: int = EXIT_TIMEOUT_S) -> tuple[list[str], dict]:
    """argv and environment that run the bundled tritonserver, plain, on a model repository:
    HTTP and gRPC on unix sockets in ``workdir`` (``private_sockets``), logging, trace,
    shared memory and model control off (``restricted_off``), a backend directory under
    ``workdir`` holding the python backend and the stub for this Python version, this
    interpreter's libpython first on the library path and its bin folder first on PATH
    (the stub's Python finds this environment's packages through it)."""
    import_pytriton()
    from pytriton.utils.distribution import get_libs_path, get_root_module_path, get_stub_path

    dist = get_root_module_path() / "tritonserver"
    backend = Path(workdir) / "backends" / "python"
    backend.mkdir(parents=True, exist_ok=True)
    for target in [*(dist / "backends" / "python").glob("*.*"),
                   get_stub_path(f"{sys.version_info[0]}.{sys.version_info[1]}")]:
        link = backend / target.name
        if not link.exists():
            link.symlink_to(target)
    env = prefer_own_libpython(dict(os.environ))
    env["LD_LIBRARY_PATH"] += ":" + str(get_libs_path())
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    http, _ = private_sockets(workdir)  # checks the path lengths
    argv = [str(dist / "bin" / "tritonserver"), f"--model-repository={repository}",
            f"--backend-directory={backend.parent}", f"--http-address=unix:{http}",
            f"--http-port={UNIX_PORT}", f"--grpc-address=unix:{Path(workdir) / GRPC_SOCKET}",
            f"--grpc-port={UNIX_PORT}",
            # tritonserver reads an IPv6 address only so marked (a bare "::1" it logged, but
            # bound 255.255.255.255)
            f"--metrics-address={'ipv6:' if ':' in metrics_host else ''}{metrics_host}",
            f"--metrics-port={metrics_port}", f"--exit-timeout-secs={exit_timeout_secs}",
            f"--http-restricted-api={restricted_off()}",
            f"--grpc-restricted-protocol={restricted_off()}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix(workdir)}"]
    return argv, env


def shm_prefix(workdir: str | os.PathLike) -> str:
    """The prefix of the shared-memory regions of the stubs of the tritonserver whose
    sockets are in ``workdir``: its folder's unique part (front's pid, random)."""
    return f"{SHM_PREFIX}{Path(workdir).name.removeprefix(WORKDIR_PREFIX)}_"


@contextlib.contextmanager
def _private_folder(prefix: str) -> Iterator[str]:
    """A private (0700) temporary folder named with this process's pid, its ALIVE lock
    held by this process and the tritonserver it starts (``_HELD``) until the folder is
    removed. The lock file is locked before it takes its name: a sweep never finds it
    unlocked while its server starts."""
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    fd = None
    try:
        fd = os.open(folder / f"{ALIVE}.new", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(folder / f"{ALIVE}.new", folder / ALIVE)
        _HELD.add(fd)
        yield str(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # under the lock: no sweep meets a part
        if fd is not None:
            _HELD.discard(fd)
            os.close(fd)


STUB = "triton_python_backend_stub"  # the python backend's model processes
SERVER = "tritonserver"  # their parent while their server runs
STUB_EXIT_S = 10.0  # how long a sweep waits for the stubs it killed to let go of a lock


def _unheld(folder: Path) -> bool:
    """Whether ``folder`` is this user's private folder whose ALIVE lock nobody holds (no
    server takes a dead one up again: every server makes a folder of a new name), once
    stubs holding it alone are ended (``_end_orphaned_stubs``). A folder without one
    (another version's, or being made) is not known dead."""
    try:
        st = os.lstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        return not held(folder / ALIVE) or _end_orphaned_stubs(folder / ALIVE)
    except OSError:
        return False


def _end_orphaned_stubs(lock: Path) -> bool:
    """Kill (SIGKILL) the processes holding ``lock`` open when every one is an orphaned
    python-backend stub of this user: a front killed while its models loaded left them
    deadlocked in Triton's own shutdown, holding the lock and about 735 MB (the stubs alone,
    seen on this workplace's CPU, 2026-12-07) for good. Only when the folder's front (the
    pid in its name) is gone, every holder is a stub, and no stub's parent is a tritonserver
    (a running server's); a process whose descriptors cannot be read counts as another
    holder. Whether the lock is free then. Linux's /proc; elsewhere nothing is killed."""
    front = lock.parent.name.removeprefix(WORKDIR_PREFIX).removeprefix(REPOSITORY_PREFIX)
    with contextlib.suppress(ValueError, OSError):
        if Path(f"/proc/{int(front.split('-')[0])}").exists():
            return False
    holders = _holders(lock)
    if not holders or not all(_program(pid) == STUB and _program(_parent(pid)) != SERVER
                              for pid in holders):
        return False
    for pid in holders:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STUB_EXIT_S
    while held(lock) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not held(lock)


def _holders(path: Path) -> list[int] | None:
    """The processes of this user with file ``path`` open (Linux's /proc/PID/fd, compared
    by device and inode); None when a process's descriptors cannot be read (not known)."""
    target = os.stat(path)
    want = (target.st_dev, target.st_ino)
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid != os.getuid():
                continue
            fds = os.listdir(proc / "fd")
        except FileNotFoundError:  # gone meanwhile
            continue
        except OSError:
            return None
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile: that descriptor only
                st = os.stat(proc / "fd" / fd)
                if (st.st_dev, st.st_ino) == want:
                    pids.append(int(proc.name))
                    break
    return pids


def _program(pid: int | None) -> str | None:
    """The file name of the program process ``pid`` runs (its argv[0]), None if unknown."""
    try:
        return os.path.basename(os.fsdecode(
            Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]))
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    """Process ``pid``'s parent, None if unknown."""
    try:  # /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def sweep_leftovers(temp: str | os.PathLike | None = None,
                    shm: str | os.PathLike = SHM_ROOT) -> list[Path]:
    """Remove what servers killed outright left: their private folders in ``temp``
    (default: the temp folder) whose ALIVE lock no process holds (or python-backend
    stubs alone, which are ended first), and the shared-memory regions in ``shm`` named
    after them. Returns the folders removed."""
    removed = []
    for folder in sorted(Path(temp or tempfile.gettempdir()).iterdir()):
        if folder.name.startswith((REPOSITORY_PREFIX, WORKDIR_PREFIX)) and _unheld(folder):
            if folder.name.startswith(WORKDIR_PREFIX):
                for region in Path(shm).glob(f"{shm_prefix(folder)}*"):
                    with contextlib.suppress(OSError):
                        region.unlink()
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _die_with_this_process():
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when this process dies,
    however it dies: a front killed with SIGKILL left tritonserver and its stubs (about
    800 MB in all for the shipped model) running on, orphaned, for good. SIGTERM shuts them
    down as the front's own stop does. Linux only (prctl); elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls
    prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    parent = os.getpid()

    def arm() -> None:  # in the child, between fork and exec
        # the front's Python handler would only note a SIGTERM that came before the exec;
        # a SIGINT the front's shell ignored (`serve &` in a script) would leave
        # tritonserver deaf to the SIGINT that stops it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != parent:  # the front died before the signal was armed
            os._exit(1)
    return arm


def run_tritonserver(repository: str | os.PathLike, host: str = HOST,
                     http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT,
                     metrics_port: int = METRICS_PORT, exit_timeout_secs: int = EXIT_TIMEOUT_S,
                     read_timeout_secs: float = READ_TIMEOUT_S,
                     max_client_requests: int = CLIENT_REQUESTS) -> int:
    """Run the bundled tritonserver on ``repository`` behind the front on ``host``'s ports
    (HTTP clients get ``read_timeout_secs`` for a request's header, then for its body; a
    client address has ``max_client_requests`` requests in hand at most, 0: no limit)
    until SIGINT / SIGTERM (status 128 + the signal, as a command a signal stopped, unless
    tritonserver's own shutdown failed: its status) or its exit (its exit status)."""
    missing = [m for m in MODELS if not (Path(repository) / m / "config.pbtxt").is_file()]
    if missing:  # tritonserver would start, print its banner and exit 1
        raise ValueError(f"{repository} is not a model repository of `bridgegan serve "
                         f"--write-repository` (no {', '.join(missing)}/config.pbtxt); one of "
                         f"`bridgegan export triton-repo` (ONNX / TensorRT models) runs in "
                         f"NVIDIA's Triton container")
    check_shell_safe(repository)
    from .front import Front
    from .http_client import wait_ready
    from .request_checks import fetch_specs

    swept = sweep_leftovers()
    if swept:
        print(f"removed what {len(swept)} server(s) killed outright left: "
              f"{', '.join(map(str, swept))}", flush=True)
    with _private_folder(WORKDIR_PREFIX) as workdir:  # 0700
        argv, env = tritonserver_command(repository, workdir, host, metrics_port,
                                         exit_timeout_secs)
        http, grpc = private_sockets(workdir)
        print(shlex.join(argv), flush=True)
        proc = subprocess.Popen(argv, env=env, preexec_fn=_die_with_this_process(),
                                pass_fds=sorted(_HELD))  # the locks: alive while it runs
        try:
            wait_ready(http, MODELS, proc)
            # requests in flight at a signal are answered within the exit timeout, then
            # tritonserver gets its own
            with Front(fetch_specs(http), http, grpc, host, http_port, grpc_port,
                       read_timeout_secs, grace_s=exit_timeout_secs,
                       client_requests=max_client_requests) as front:
                stopped = []

                def stop(sig, _):  # no new requests, then the server shuts down itself
                    stopped.append(sig)
                    front.close()
                    proc.send_signal(signal.SIGINT)
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, stop)
                print(f"serving {', '.join(MODELS)} of {repository} on http://"
                      f"{host_port(host, http_port)} and grpc {host_port(host, grpc_port)}"
                      f"{_attribute_order(repository)}", flush=True)
                status = proc.wait()
                if status < 0:  # tritonserver killed by a signal: as a shell reports it
                    status = signal_status(-status)
                if not stopped or status:
                    return status
                print(f"stopped by {signal.Signals(stopped[0]).name}", flush=True)
                return signal_status(stopped[0])
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait()


def _attribute_order(repository: str | os.PathLike) -> str:
    """"; attributes (label order): A, B, ..." from a model's bridgegan.json, or "" for a
    repository without one."""
    for model in MODELS:
        try:
            meta = json.loads((Path(repository) / model / "bridgegan.json").read_text())
            names = meta["attributes"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return f"; attributes (label order): {', '.join(map(str, names))}"
    return ""


def serve_checkpoint(checkpoint: str | os.PathLike, max_batch: int, queue_delay_us: int,
                     device: str, backend: str, dtype: str, max_queue_size: int = 0,
                     **server) -> int:
    """Write the python-backend repository of ``checkpoint`` into a private temporary
    folder and run tritonserver on it (``run_tritonserver``'s keyword options)."""
    from .repo_python import write_python_repo

    check_shell_safe()  # before anything is written there
    with _private_folder(REPOSITORY_PREFIX) as folder:
        repository = Path(folder) / "models"
        write_python_repo(checkpoint, repository, max_batch, queue_delay_us, device, backend,
                          dtype, max_queue_size)
        return run_tritonserver(repository, **server)
