"""The Engine: a trained BridgeGAN behind a batched translation API on a chosen backend.

Images go in as tensors in [-1, 1] or PIL images / files (see ``io`` for the size and mode
policy) and come out as float32 tensors (N, 3, S, S) in [-1, 1] on the engine's device.
Source labels come from the caller or, when not given, from the discriminator's
attribute head (a logit above 0 means the attribute is present; each image's labels are
the ones it gets alone, whatever its batch: ``Engine._head_labels``). Noise is drawn on
the CPU from ``seed`` so that one seed gives the same images on every backend and device.
An integer seed draws the whole batch's noise at once, so an image's noise depends on the
batch size and its position; a list of N seeds draws each image's noise from its own
seed, as that image translated alone with that seed gets it (results independent of the
batch); noise and seed are not given together.
Edits without a ``strength`` use the model's ``config.edit_strength`` (the official
test's 1.5 unless the model's config.json names another operating point).
Bad arguments (labels other than 0/1; a strength, noise, alpha or seed that is not a
number or out of range: ``arguments``) raise a ValueError naming the argument and what is
accepted. Weights are checked when an engine is made (finite, and finite once cast to its
dtype), and every result before it is returned (one reduction per call: ``finite``): NaN
or Inf raise a NonFiniteOutputError (a ValueError) instead of reaching the caller. Its
device and dtype: ``placement``.
"""
from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from ..kernels.layout import memory_format
from ..numerics import real_value
from ..reference import programs
from ..reference.attributes import apply_edits, check_names, set_rows
from ..reference.checkpoint import load_checkpoint
from ..reference.config import BridgeGANConfig
from ..reference.model import BridgeGAN
from ..threads import forked_warning, guard_forks
from ..torch_flags import cudnn_search, no_tf32
from .arguments import (BOUNDS, as_alphas, as_flag, as_number, as_samples, as_seed, as_seeds,
                        as_tensor, check_bounded, draw_noise)
from .backends import AUTO, REGISTRY, check_backend
from .cudagraphs import MAX_ROWS, CudaGraphed, GraphMemory, bucket_floor, in_chunks
from .finite import check_output, check_weights
from .graph import Rewrites
from .io import Images, as_batch, value_range
from .options import NOISE_OR_SEED, check_sample_seeds
from .placement import backend_dtype, default_channels_last, engine_device
from .streams import Concurrent


# Attribute-head logits within this of 0 are computed again from their row alone
# (``Engine._head_labels``): far above the float32 difference between a row's logits in a
# batch and alone on the CPU (1e-5 measured); on CUDA (the head in float32, TF32 off)
# not measured yet (a `gpu` test does). 5-8% of the shipped model's face rows.
LABEL_MARGIN = 1e-2


def _sources_per_chunk(k: int) -> int:
    """Sources per program call when each has ``k`` images of its own (references to
    encode, samples to decode): at most MAX_ROWS images at once (at least one source), so
    memory, and on CUDA a graph's buffers, stay bounded whatever ``k``; a graph bucket's
    size, so that a full chunk runs no padded rows (85 sources would run as 128)."""
    return bucket_floor(max(1, MAX_ROWS // k))


def _serialised(method):
    """Run the whole call under the engine's lock (a no-op for stateless backends),
    without autograd (``no_grad``, not ``inference_mode``: callers get ordinary tensors
    they may modify in place or feed to autograd), with ``cudnn_benchmark`` inside cuDNN's
    algorithm search, and on CUDA with TF32 off: float32 means float32 (the tolerance its
    parity is held to; the attribute head is float32 in every dtype), not cuDNN's default
    TF32 convolutions."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        forked_warning()  # once, in a forked worker that runs torch on one thread
        with (self._lock, torch.no_grad(),
              cudnn_search() if self.cudnn_benchmark else nullcontext(),
              no_tf32() if self.device.type == "cuda" else nullcontext()):
            return method(self, *args, **kwargs)
    return call


@dataclass(frozen=True)
class Program:
    """A program of ``programs`` bound to an engine's stages (``fn``: CUDA-graphed or
    not) and its arguments' batch dimensions."""

    fn: Callable
    dims: tuple[int, ...]


@dataclass
class EditStrip:
    """One source's reconstruction, every single-attribute flip, and noise samples."""

    images: torch.Tensor  # (K, 3, S, S)
    captions: list[str]


class Engine:
    """``backend``: a name of ``backends.REGISTRY``, or "auto" for the fastest measured
    backend that runs on ``device`` at ``dtype`` (triton on CUDA, onnxruntime on a CPU:
    ``backends.FASTEST``; else torch); ``self.backend`` is the resolved name.
    ``streams`` (CUDA): the generator's trunk and the latent codes overlap on streams of
    their own (``engine.streams``), for small batches."""

    def __init__(self, model: BridgeGAN, backend: str = "torch", dtype: str | torch.dtype = "float32",
                 device: str | torch.device = "cpu", channels_last: bool | None = None,
                 cuda_graphs: bool | None = None, rewrites: Rewrites | None = None,
                 onnx_dir: str | Path | None = None, cudnn_benchmark: bool | None = None,
                 streams: bool = False):
        if not isinstance(model, BridgeGAN):
            raise ValueError(f"model must be a BridgeGAN (for a checkpoint folder: "
                             f"Engine.from_checkpoint(path)), got {type(model).__name__}")
        guard_forks()  # a worker forked from this process must not hang in torch
        self.device = engine_device(device)
        channels_last, cuda_graphs = (as_flag(channels_last, "channels_last"),
                                      as_flag(cuda_graphs, "cuda_graphs"))
        cudnn_benchmark, streams = (as_flag(cudnn_benchmark, "cudnn_benchmark"),
                                    as_flag(streams, "streams", optional=False))
        if rewrites is not None and not isinstance(rewrites, Rewrites):
            raise ValueError(f"rewrites must be None (all) or a Rewrites (Rewrites.none(), "
                             f"Rewrites.only(name), Rewrites(name=False)), got {rewrites!r}")
        if onnx_dir is not None and not isinstance(onnx_dir, (str, os.PathLike)):
            raise ValueError(f"onnx_dir must be a folder path (str or os.PathLike), got "
                             f"{type(onnx_dir).__name__}")
        self.config: BridgeGANConfig = model.config
        self.dtype = backend_dtype(backend, dtype, self.device)
        spec = check_backend(backend, self.device, self.dtype)
        self.backend = spec.name
        self._check_fits(spec, backend == AUTO, rewrites, onnx_dir, cuda_graphs, streams,
                         cudnn_benchmark)
        check_weights(model, self.dtype)
        self.rewrites = rewrites or Rewrites()
        if channels_last is None:
            channels_last = default_channels_last(self.device, self.dtype)
        self.channels_last = channels_last
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and spec.graphs_by_default
        self.cuda_graphs = cuda_graphs
        # the trunk and the latent codes on streams of their own (``streams``): off until
        # measured on a GPU
        self.streams = streams
        # cuDNN's algorithm search while the engine runs (torch_flags); on by default on
        # CUDA, where it picks the convolution algorithms its warm-up and captures keep
        self.cudnn_benchmark = (self.device.type == "cuda" if cudnn_benchmark is None
                                else cudnn_benchmark)
        self.stages = spec.build(model, self.rewrites, self.dtype, self.device, channels_last,
                                 onnx_dir)
        # D's attribute head: images -> float32 logits (N, A), whose signs are source labels
        self.attribute_logits = spec.classifier(model, self.rewrites, self.device, onnx_dir)
        self._build_programs()
        # Calls that share state (compiled code, CUDA-graph buffers and captures, which must
        # not meet other work on the device) run one at a time, whole.
        self._lock = threading.RLock() if spec.serialised or cuda_graphs else nullcontext()

    def _check_fits(self, spec, auto: bool, rewrites, onnx_dir, cuda_graphs, streams,
                    cudnn_benchmark) -> None:
        """Refuse the options that backend ``spec`` (``auto``: picked by "auto") or the
        device cannot take."""
        if onnx_dir is not None and not spec.exported and not auto:  # auto may pick one
            exporters = ", ".join(b.name for b in REGISTRY.values() if b.exported)
            raise ValueError(f"onnx_dir is the export folder of the backends that run ONNX "
                             f"graphs ({exporters}); backend {spec.name!r} runs none")
        if rewrites not in (None, Rewrites()) and not spec.rewritten:
            rewritten = ", ".join(b.name for b in REGISTRY.values() if b.rewritten)
            raise ValueError(f"backend {spec.name!r} runs the unmodified model: rewrites apply "
                             f"to the backends of the rewritten graph ({rewritten})")
        # the backends whose work runs on torch's current CUDA stream (capturable, streamable)
        capturable = ", ".join(b.name for b in REGISTRY.values() if b.cuda_graphs)
        if cuda_graphs and not spec.cuda_graphs:
            raise ValueError(f"cuda_graphs applies to the backends {capturable}, not "
                             f"{spec.name!r}")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs device='cuda'")
        if streams and not (spec.cuda_graphs and self.device.type == "cuda"):
            raise ValueError(f"streams needs device='cuda' and one of the backends {capturable} "
                             f"(got {self.device.type!r}, {spec.name!r})")
        if cudnn_benchmark and self.device.type != "cuda":
            raise ValueError("cudnn_benchmark needs device='cuda'")

    def _build_programs(self) -> None:
        """The programs most calls run: fixed-shape functions of tensors, CUDA-graphed when
        ``cuda_graphs`` (results are returned in float32: the graphs copy them out as that),
        called by ``_run`` (at most MAX_ROWS rows at a time: memory, and the largest graph,
        bounded)."""
        branched = Concurrent(self.stages, self.device) if self.streams else self.stages
        memory = GraphMemory() if self.cuda_graphs else None  # one pool for all the programs

        def program(fn, dims, **options):
            fn = functools.partial(fn, branched, **options)
            if self.cuda_graphs:
                fn = CudaGraphed(fn, dims, self.device, out_dtype=torch.float32, memory=memory)
            return Program(fn, dims)
        self._label = program(programs.translate_label, programs.LABEL_BATCH_DIMS)
        self._reference = program(programs.translate_reference, programs.REFERENCE_BATCH_DIMS)
        self._samples = program(programs.translate_samples, programs.SAMPLES_BATCH_DIMS,
                                repeat=self._repeat)

    def __getstate__(self) -> dict:
        """Pickling and copying: an engine of the reference, torch or triton backend without
        CUDA graphs or side streams pickles as its graphs and weights; the others hold what
        cannot leave their process (inference sessions, compiled code, captured graphs, CUDA
        streams, a lock), so they say what to do instead of failing on some object inside."""
        spec = REGISTRY[self.backend]
        if spec.exported or spec.serialised or self.cuda_graphs or self.streams:
            held = (" with CUDA graphs" if self.cuda_graphs else "") + (
                " with side streams" if self.streams else "")
            raise TypeError(f"an Engine on the {self.backend} backend{held} cannot be pickled "
                            "or copied; build one in each process that needs it (e.g. "
                            "Engine.from_checkpoint in a multiprocessing.Pool initializer)")
        return self.__dict__

    def __setstate__(self, state: dict) -> None:
        guard_forks()  # as a built engine does: this process's forks must not hang either
        self.__dict__.update(state)

    @classmethod
    def from_checkpoint(cls, path: str | Path, backend: str = "torch",
                        dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                        expected_config: BridgeGANConfig | None = None, **kw) -> "Engine":
        """Load a checkpoint folder (see bridgegan.reference.checkpoint) onto a backend.
        ``onnx_dir=`` (onnxruntime, tensorrt): the export folder to use or fill."""
        return cls(load_checkpoint(path, expected_config), backend, dtype, device, **kw)

    # ----- inputs --------------------------------------------------------------------
    @property
    def attributes(self) -> tuple[str, ...]:
        return self.config.attributes

    def load_images(self, images: Images, what: str = "images") -> torch.Tensor:
        """Checked float32 batch (N, 3, S, S) on the engine's device (policy: ``io``)."""
        return as_batch(images, self.config.image_size, what).to(self.device)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last and x.dim() == 4 else torch.contiguous_format
        return x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=fmt)

    @staticmethod
    def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
        """``programs.interleave`` in one copy, in x's dtype and memory format (a stage's
        output as it is: an exported backend's float32, a torch backend's layout)."""
        fmt = memory_format(x) if x.dim() == 4 else torch.contiguous_format
        out = torch.empty((x.shape[0] * k, *x.shape[1:]), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        out.unflatten(0, (x.shape[0], k)).copy_(x.unsqueeze(1))
        return out

    @_serialised
    def classify(self, images: Images) -> torch.Tensor:
        """Source labels (N, A) from the discriminator's attribute head (logit > 0), on the
        engine's device."""
        return self._source(self.load_images(images), None).to(self.device)

    def _labels(self, labels, n: int, what: str) -> torch.Tensor:
        """0/1 labels (N, A) or (A,) as float32 (N, A) in host memory, checked in float64
        before the cast (so that 0.99999999 is not read as 1). Labels stay on the host
        until ``d`` is cast for the stages: the edits' rules and an edit strip's flips read
        them row by row, each read of device memory a sync."""
        labels = as_tensor(labels, what, torch.float64)
        given = tuple(labels.shape)
        if labels.dim() == 1:
            labels = labels.expand(n, -1)
        a = self.config.n_attrs
        if labels.shape != (n, a):
            raise ValueError(f"{what} must have shape ({n}, {a}) or ({a},) for the attributes "
                             f"{', '.join(self.attributes)}; got {given}")
        bad = labels[(labels != 0) & (labels != 1)]  # NaN included
        if bad.numel():
            raise ValueError(f"{what} must be 0 (absent) or 1 (present), got {bad[0].item()}")
        return labels.to(torch.float32)  # on the CPU, as as_tensor gives it

    def _source(self, x: torch.Tensor, source) -> torch.Tensor:
        if source is None:
            return self._head_labels(x)
        return self._labels(source, x.shape[0], "source labels")

    def _head_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The attribute head's labels (logit > 0), each row's the label that row gets
        alone: a batch's float32 rounding differs from a single row's (about 1e-5 here),
        which would tip a logit that close to 0 and flip a whole attribute of the result
        with the row's batch mates (serve's dynamic batching) or chunking. So the batch runs
        at once and the rows with a logit within LABEL_MARGIN of 0 run again alone. In host
        memory, as ``_labels``: the logits come to the host in one transfer (a call on
        device tensors waits for the device once here, not twice)."""
        logits = in_chunks(self.attribute_logits, (x,), MAX_ROWS).cpu()
        if x.shape[0] > 1:
            for i in (logits.abs() < LABEL_MARGIN).any(1).nonzero().flatten().tolist():
                logits[i] = self.attribute_logits(x[i:i + 1])[0]
        return (logits > 0).float()

    def _target(self, source: torch.Tensor, target) -> torch.Tensor:
        if isinstance(target, Mapping):
            return apply_edits(source, self.attributes, target)
        if target is None or isinstance(target, (str, bytes, set, frozenset)):
            raise ValueError(f"target must be a dict attribute name -> 0/1 (names: "
                             f"{', '.join(self.attributes)}) or target labels (N, A) or (A,) "
                             f"of 0/1, got {type(target).__name__}")
        return self._labels(target, source.shape[0], "target labels")

    def _noise(self, n: int, noise, seed) -> torch.Tensor:
        if noise is not None and seed is not None:  # a seed would be silently ignored
            raise ValueError(NOISE_OR_SEED)
        seed = as_seeds(seed, n)
        if noise is None:  # N(0, 1) draws: finite, and far inside the bound
            return draw_noise(n, self.config.noise_dim, seed).to(self.device, torch.float32)
        noise = as_tensor(noise, "noise", torch.float64)  # bounded before float32 rounds
        if noise.shape != (n, self.config.noise_dim):
            raise ValueError(f"noise must have shape ({n}, {self.config.noise_dim}), "
                             f"got {tuple(noise.shape)}")
        check_bounded(noise, "noise", BOUNDS["noise"])
        return noise.to(self.device, torch.float32)

    def _difference(self, y_s: torch.Tensor, y_t: torch.Tensor, strength) -> torch.Tensor:
        """d (``BridgeGANConfig.label_difference``), the strength checked; None: the config's
        ``edit_strength`` (the model's operating point)."""
        scale = as_number(self.config.strength(strength), "strength", BOUNDS["strength"])
        return self.config.label_difference(y_s, y_t, scale)

    def _region(self, region, n: int) -> torch.Tensor | None:
        """A region mask (S, S), (1 or N, S, S) or (1 or N, 1, S, S) in [0, 1] at image size,
        as (N, 1, S, S)."""
        if region is None:
            return None
        s = self.config.image_size
        m = as_tensor(region, "region")
        m = m.reshape(1, 1, s, s) if m.shape == (s, s) else m
        m = m.unsqueeze(1) if m.dim() == 3 else m
        if m.dim() != 4 or m.shape[1:] != (1, s, s) or m.shape[0] not in (1, n):
            raise ValueError(f"region must be a mask of shape ({s}, {s}), (N, {s}, {s}) or "
                             f"(N, 1, {s}, {s}) with N 1 or {n}; got {tuple(m.shape)}")
        lo, hi = value_range(m)
        if not (lo >= 0 and hi <= 1):  # NaN fails too
            raise ValueError(f"region values must be finite and in [0, 1] (1: edit, 0: keep), "
                             f"got [{lo:g}, {hi:g}]" + (" (a 0..255 mask: divide it by 255)"
                                                        if 1 < hi <= 255 and lo >= 0 else ""))
        return m.expand(n, -1, -1, -1).to(self.device)

    def _reference_batches(self, references, n: int) -> list[torch.Tensor]:
        """K reference batches, each of N or 1 images (``_broadcast`` to N by the caller)."""
        several = isinstance(references, (list, tuple)) and references and all(
            isinstance(r, (list, tuple)) or (isinstance(r, torch.Tensor) and r.dim() == 4)
            for r in references)
        if several and len(references) == n > 1 and all(
                isinstance(r, torch.Tensor) and r.shape[0] == 1 for r in references):
            raise ValueError(  # ``images`` would read this list as one batch
                f"references: a list of {n} one-image tensors for {n} sources is ambiguous: "
                f"for one reference per source pass one batch (torch.cat(references), or 3-D "
                f"tensors); for {n} references each shared by every source (their codes "
                f"averaged) pass a list of lists ([[r] for r in references])")
        if several and len(references) > MAX_ROWS:  # each source's encoded in one call
            raise ValueError(f"references: at most {MAX_ROWS} references per source (their "
                             f"codes are averaged), got {len(references)}")
        named = ([(f"references[{k}]", r) for k, r in enumerate(references)] if several
                 else [("references", references)])
        out = []
        for what, r in named:
            b = self.load_images(r, what)
            if b.shape[0] not in (1, n):
                raise ValueError(
                    f"{what}: expected {'1 image' if n == 1 else f'1 or {n} images'} (one "
                    f"per source), got {b.shape[0]}" + ("" if several else
                    "; to average several references per source pass a list of them, "
                    "each a batch of 1 or N images (a list of lists, or of 4-D tensors)"))
            out.append(b)
        return out

    @staticmethod
    def _broadcast(batches: list[torch.Tensor], n: int) -> torch.Tensor:
        """(K, N, 3, S, S) of K reference batches of N or 1 images."""
        return torch.stack([b.expand(n, -1, -1, -1) for b in batches])

    def _checked(self, out: torch.Tensor) -> torch.Tensor:
        return check_output(out, self.dtype, self.backend)

    def _run(self, program: Program, *args, rows: int | None = None) -> torch.Tensor:
        """``program`` over the given args (None: left out), in chunks of ``rows`` (default
        MAX_ROWS) along their batch dimensions."""
        args = [self._cast(a) for a in args if a is not None]
        return self._checked(in_chunks(program.fn, args, rows or MAX_ROWS, program.dims).float())

    # ----- API -----------------------------------------------------------------------
    @_serialised
    def translate(self, images: Images, target, noise=None, strength: float | None = None,
                  source=None, seed: int | Sequence[int] | None = None, region=None
                  ) -> torch.Tensor:
        """Label-based translation. ``target``: labels (N, A) / (A,) or a dict name -> 0/1
        applied to the source labels with the conflict rules. ``region``: a mask at image
        size in [0, 1] (soft edges allowed) that confines the edit: the edited and the
        reconstruction's latent codes are mixed by it (S is spatial) and the result is
        composited over the reconstruction by it, so pixels outside stay reconstructed."""
        x = self.load_images(images)
        y_s = self._source(x, source)
        d = self._difference(y_s, self._target(y_s, target), strength)
        n = x.shape[0]
        return self._run(self._label, x, d, self._noise(n, noise, seed), self._region(region, n))

    @_serialised
    def translate_samples(self, images: Images, target, samples: int, seed: int | None = 0,
                          strength: float | None = None, source=None) -> torch.Tensor:
        """``samples`` (1 to MAX_SAMPLES) noise samples of the label-based translation of
        each image to ``target`` (as in ``translate``): (N, samples, 3, S, S). Sample k's
        noise is drawn from ``seed + k`` alone and is the same for every image, so sample
        k of image i is ``translate(images[i:i + 1], target, seed=seed + k)`` whatever the
        batch (None: from torch's global generator). The trunk and the source's code run
        once per image, not once per sample."""
        samples, seed = as_samples(samples, 1), as_seed(seed)
        if seed is not None:
            check_sample_seeds(seed, samples)
        x = self.load_images(images)
        y_s = self._source(x, source)
        d = self._difference(y_s, self._target(y_s, target), strength)
        seeds = None if seed is None else [seed + k for k in range(samples)]
        r = draw_noise(samples, self.config.noise_dim, seeds)
        n = x.shape[0]
        return self._run(self._samples, x, d, r[None].expand(n, -1, -1),
                         rows=_sources_per_chunk(samples))

    @_serialised
    def reconstruct(self, images: Images, noise=None, seed: int | Sequence[int] | None = None
                    ) -> torch.Tensor:
        x = self.load_images(images)
        d = x.new_zeros(x.shape[0], self.config.n_attrs)
        return self._run(self._label, x, d, self._noise(x.shape[0], noise, seed))

    @_serialised
    def translate_reference(self, images: Images, references, attributes: Sequence[str] | None = None,
                            source=None, reference_labels=None,
                            strength: float | None = None, region=None) -> torch.Tensor:
        """Reference-based translation: the target takes ``attributes`` (default: all) from
        the references' labels (``reference_labels``, or from the attribute head).
        ``references`` is one batch of N or 1 images (a tensor, or a list of 3-D tensors,
        PIL images or paths), or a list of K such batches (4-D tensors or lists): K
        separate references per source, their codes averaged, never joined into one batch
        (N one-image 4-D tensors for N > 1 sources are refused as ambiguous).
        Labels from the attribute head are averaged over the K batches and rounded half to
        even (two references disagreeing give 0.5, read as 0: absent). ``region``: a mask
        as in ``translate``, but outside it the pixels are this call's d = 0 translation,
        which takes the references' style: they depend on the references and differ from
        ``reconstruct``'s."""
        x = self.load_images(images)
        batches = self._reference_batches(references, x.shape[0])
        y_s = self._source(x, source)
        y_t = self._reference_target(y_s, batches, attributes, reference_labels)
        return self._run(self._reference, x, self._broadcast(batches, x.shape[0]),
                         self._difference(y_s, y_t, strength), self._region(region, x.shape[0]),
                         rows=_sources_per_chunk(len(batches)))

    def _reference_target(self, y_s, batches, attributes, reference_labels) -> torch.Tensor:
        if reference_labels is None:  # a batch of one reference labelled once, not per source
            y_r = torch.stack([self._source(r, None).expand(y_s.shape[0], -1)
                               for r in batches]).mean(0).round()
        else:
            y_r = self._labels(reference_labels, y_s.shape[0], "reference labels")
        if attributes is None:
            return y_r
        if isinstance(attributes, (str, bytes)) or not isinstance(attributes, Sequence):
            raise ValueError(f"attributes must be a list of attribute names (of "
                             f"{', '.join(self.attributes)}), got {attributes!r}")
        check_names(list(attributes), self.attributes)
        index = [self.attributes.index(n) for n in attributes]
        return set_rows(y_s, self.attributes, list(attributes), y_r[:, index])

    @_serialised
    def interpolate(self, images: Images, references, target, alphas: Sequence[float],
                    noise=None, seed: int | Sequence[int] | None = None, level: str = "latent",
                    source=None, strength: float | None = None, region=None) -> torch.Tensor:
        """(len(alphas), N, 3, S, S): alpha = 1 is label-based, 0 reference-based.
        ``references``: as in ``translate_reference``. level "latent" blends the codes,
        "spade" blends every SPADE layer's output. ``region`` (level "latent" only): a mask
        as in ``translate`` on the blended codes; outside it the pixels are the same blend
        at d = 0 (reconstruction and reference-based d = 0 translation)."""
        alphas = as_alphas(alphas)
        x = self.load_images(images)
        refs = self._broadcast(self._reference_batches(references, x.shape[0]), x.shape[0])
        y_s = self._source(x, source)
        d = self._difference(y_s, self._target(y_s, target), strength)
        r = self._noise(x.shape[0], noise, seed)
        m = self._region(region, x.shape[0])

        def blend(x, refs, d, r, m=None):
            return programs.interpolate(self.stages, x, refs, d, r, alphas, level, m)
        args = [self._cast(t) for t in (x, refs, d, r, m) if t is not None]
        outs = in_chunks(blend, args, _sources_per_chunk(len(refs)), (0, 1, 0, 0, 0))
        return self._checked(torch.stack([o.float() for o in outs]))

    def _edits(self, sample_target) -> Mapping:
        """``sample_target`` of ``edit_strip``, refused unless a dict (its names and values
        are checked where applied)."""
        if not isinstance(sample_target, Mapping):
            raise ValueError(f"sample_target must be None or a dict attribute name -> 0/1 "
                             f"(names: {', '.join(self.attributes)}), got "
                             f"{type(sample_target).__name__}")
        return sample_target

    @_serialised
    def edit_strip(self, image: Images, samples: int = 4, seed: int = 0, source=None,
                   sample_target: Mapping[str, float] | None = None,
                   strength: float | None = None, cache: bool = True) -> EditStrip:
        """Reconstruction, every single-attribute flip (conflict rules applied), and
        ``samples`` (at most MAX_SAMPLES) noise samples of ``sample_target``, a dict name ->
        0/1 applied to the source labels (None: the first flip; {}: no edit), for one source
        image. The reconstruction and the flips take the noise of ``seed``, sample k that of
        ``seed + 1 + k``: each row is what ``reconstruct``, ``translate`` and
        ``translate_samples(..., seed=seed + 1)`` give with those seeds (rounding apart),
        whatever ``samples`` (None: one draw from torch's generator). With ``cache`` the
        source-only trunk runs once for the whole strip."""
        samples = as_samples(samples, 0)
        seed = as_seed(seed)
        if seed is not None:
            check_sample_seeds(seed, samples, first=1)
        as_flag(cache, "cache", optional=False)
        x = self.load_images(image)
        if x.shape[0] != 1:
            raise ValueError(f"edit_strip takes one image, got {x.shape[0]}")
        y_s = self._source(x, source)
        flips = [{n: 1 - int(y_s[0, i].item())} for i, n in enumerate(self.attributes)]
        sample_target = flips[0] if sample_target is None else self._edits(sample_target)
        targets = [y_s] + [apply_edits(y_s, self.attributes, f) for f in flips]
        targets += [apply_edits(y_s, self.attributes, sample_target)] * samples
        captions = ["reconstruction"] + [f"{n}={v}" for f in flips for n, v in f.items()]
        edits = ",".join(f"{n}={real_value(v):.0f}"  # 0 / 1 however given (checked above)
                         for n, v in sample_target.items()) or "no edit"
        captions += [f"sample {i + 1}: {edits}" for i in range(samples)]
        y_t = torch.cat(targets)
        d = self._difference(y_s, y_t, strength)
        k = y_t.shape[0]
        r = self._noise(k, None, None) if seed is None else torch.cat([
            self._noise(1, None, seed).expand(k - samples, -1),
            self._noise(samples, None, [seed + 1 + j for j in range(samples)])])
        xc = self._cast(x)  # the strip's rows in chunks of MAX_ROWS (the trunk once each)

        def strip(d, r):
            return programs.edit_strip(self.stages, xc, d, r, cache, self._repeat)
        out = self._checked(in_chunks(strip, (self._cast(d), self._cast(r)), MAX_ROWS).float())
        return EditStrip(out, captions)
