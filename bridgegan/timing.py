"""One timer and one copy-bandwidth probe, for the benchmarks, the roofline peaks and the
parity tables.

``time_calls`` runs ``warmup`` untimed calls, then timed calls until both ``reps`` calls
and ``min_seconds`` have passed. On a CUDA device each call is timed by CUDA events
recorded on that device's current stream (device time, one sync per call); on the CPU
by ``time.perf_counter``. ``queued`` (CUDA): a spin kernel of about a millisecond is
queued before each timed call, so that the host has queued the whole call by the time the
device reaches it: the events then time the device's work alone, without the gaps of the
host's launches (what a CUDA graph's replay runs). ``flush_l2`` clears the GPU's L2 cache
before each timed call (outside the timed span), so that a kernel reads its inputs from
memory, as ``triton.testing.do_bench`` does.
"""
from __future__ import annotations

import time

import numpy as np
import torch

L2_FLUSH_BYTES = 256 << 20  # more than any current GPU's L2 (do_bench's flush size)
QUEUE_CYCLES = 2_000_000  # ``queued``'s spin: ~1 ms at 2 GHz, far above a few launches


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, warmup: int = 0, reps: int = 1, min_seconds: float = 0.0,
               flush_l2: bool = False, queued: bool = False) -> list[float]:
    """Seconds of each timed call of ``fn()`` (see the module docstring)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device) if flush_l2 and cuda else None
    for _ in range(warmup):
        fn()
    # the events go on ``device``'s stream, not the current device's (cuda:1 timed while
    # the current device is 0 would otherwise time an idle stream)
    stream = torch.cuda.current_stream(device) if cuda else None
    if cuda:  # that stream, not the device: a device-wide sync from this thread may break
        stream.synchronize()  # another thread's CUDA-graph capture (conv2d_relu's timings)
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < reps or time.perf_counter() - began < min_seconds:
        if flush is not None:
            flush.zero_()
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            if queued:
                with torch.cuda.stream(stream):
                    torch.cuda._sleep(QUEUE_CYCLES)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def p50_p20_p80(times: list[float]) -> tuple[float, float, float]:
    """Median, 20th and 80th percentiles (linear interpolation)."""
    p50, p20, p80 = np.percentile(times, [50, 20, 80])
    return float(p50), float(p20), float(p80)


def copy_bandwidth(device, nbytes: int, **timer) -> dict:
    """Bytes per second (read + written) of a device-to-device copy of ``nbytes``: p50,
    p20 and p80 (p20 from the slower calls); ``timer`` goes to ``time_calls``."""
    src = torch.empty(nbytes // 2, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    p50, p20, p80 = p50_p20_p80(time_calls(lambda: dst.copy_(src), device, **timer))
    moved = 2 * src.numel() * src.element_size()
    return {"p50": moved / p50, "p20": moved / p80, "p80": moved / p20}
