"""Independent branches of a program on CUDA side streams (issue 14 item 7).

At batch 1 every kernel of the generator's trunk, the encoder and the mapping leaves most
of the GPU idle, and the trunk and the latent code (the encoder, then the mapping, one
after the other) do not depend on each other until the decoder: the trunk runs on the
current stream and each code (with a region, the edit's and the reconstruction's) on a
side stream of its own, and they overlap. Inside a CUDA-graph capture the fork and the join
become edges of the graph, so a replay keeps the overlap at no host cost.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class Concurrent:
    """The four stage functions of ``stages`` plus ``concurrent(thunks)`` for
    ``programs.branches``: the first thunk on the current stream, each other one on a
    side stream that first waits for the current one; the current stream then waits for
    all of them."""

    SIDE_STREAMS = 2  # programs.branches' calls fork three branches at most

    def __init__(self, stages, device: torch.device):
        self.trunk, self.encode, self.map, self.decode = (
            stages.trunk, stages.encode, stages.map, stages.decode)
        self.device = device
        self.streams = [torch.cuda.Stream(device) for _ in range(self.SIDE_STREAMS)]

    def concurrent(self, thunks: Sequence[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
        if len(thunks) - 1 > len(self.streams):
            raise ValueError(f"{len(thunks)} branches, but {len(self.streams)} side streams")
        # the engine's device, not the caller's current one: the ops on the engine's
        # tensors run on that device's current stream, which the fork and join must order
        with torch.cuda.device(self.device):
            return self._concurrent(thunks, torch.cuda.current_stream(self.device))

    def _concurrent(self, thunks, main) -> list[torch.Tensor]:
        out = [None] * len(thunks)
        forked = []
        try:
            for k, (side, thunk) in enumerate(zip(self.streams, thunks[1:]), 1):
                side.wait_stream(main)
                forked.append(side)
                with torch.cuda.stream(side):
                    out[k] = thunk()
            out[0] = thunks[0]()
        finally:  # joined on errors too: the inputs' memory is the current stream's to
            for side in forked:  # free, and side-stream kernels may still read it
                main.wait_stream(side)
        if not torch.cuda.is_current_stream_capturing():
            # eager calls (a capture's warm-up): the caching allocator must not hand a
            # side stream's output to new work before the current stream has read it
            for t in out[1:]:
                t.record_stream(main)
        return out
