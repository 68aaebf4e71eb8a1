"""The one timer and the copy-bandwidth probe (CPU path; CUDA events run in the GPU check)."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from bridgegan import timing
from bridgegan.timing import copy_bandwidth, p50_p20_p80, time_calls


def test_time_calls_counts_warmup_reps_and_min_seconds():
    calls = []
    times = time_calls(lambda: calls.append(time.sleep(0.001)), "cpu", warmup=2, reps=3)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0.001 for t in times)


def test_time_calls_repeats_until_min_seconds_have_passed(monkeypatch):
    """On a clock that only the timed call moves (1/1024 s a call, exact in binary), 20/1024 s
    take exactly 20 calls, however busy the machine is."""
    now = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def call():
        now[0] += 1 / 1024

    assert time_calls(call, "cpu", reps=1, min_seconds=20 / 1024) == [1 / 1024] * 20


def test_copy_bandwidth_quantiles_are_ordered():
    bw = copy_bandwidth("cpu", 1 << 20, warmup=1, reps=5)
    assert 0 < bw["p20"] <= bw["p50"] <= bw["p80"]
    assert p50_p20_p80([3.0, 1.0, 2.0]) == pytest.approx((2.0, 1.4, 2.6))


def test_cuda_events_are_recorded_on_the_timed_device(monkeypatch):
    """cuda:1 timed while the current device is 0: both events go on cuda:1's stream, and
    the warm-up is waited for on that stream, not by a device-wide sync, which may break
    another thread's CUDA-graph capture (torch.cuda faked, so this runs without a GPU)."""
    import torch

    recorded, synced = [], []

    class Stream:
        def __init__(self, device):
            self.device = str(device)

        def __eq__(self, other):
            return isinstance(other, Stream) and other.device == self.device

        def synchronize(self):
            synced.append(self.device)

    def device_wide(device=None):
        raise AssertionError("a device-wide sync")

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream=None):
            recorded.append(stream)

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 2.0  # ms

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream(device))
    monkeypatch.setattr(torch.cuda, "synchronize", device_wide)
    assert time_calls(lambda: None, "cuda:1", warmup=1, reps=2) == [2e-3, 2e-3]
    assert recorded == [Stream("cuda:1")] * 4 and synced == ["cuda:1"]
