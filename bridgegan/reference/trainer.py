"""BridgeGAN training loop (spec section 5): WGAN-GP with n_d critic steps per generator
step, EMA of G/E/M, the noise memory, exact resume, DDP, AMP, logs and sample grids.

One training *step* is n_d discriminator updates followed by one generator update, each
on a fresh global batch with its own permutation and random draws, so a step consumes
n_d + 1 batches. All per-step randomness comes from generators seeded by
(seed, step, sub-step) and the data order from (seed, epoch) (train_data.py), which is
what makes a resumed run bit-identical to an uninterrupted one and a DDP run equal to one
process on the same global batch.

Checkpoints and what a resume restores: train_state.py; the run configuration:
train_config.py.
"""
from __future__ import annotations

import contextlib
import copy
import math
import numbers
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..devices import device_problem
from ..exits import worker_ignores_stops
from ..files import remove_stale
from ..progress import bar as progress_bar, lines as progress_lines
from .attributes import apply_edits
from .checkpoint import CheckpointError, nonfinite
from .classifier import AttributeClassifier, weights_sha256
from .config import BridgeGANConfig
from .data.image import UnreadableImageError
from .data.loader_errors import worker_error
from .distributed import DistInfo, all_gather_cat, all_reduce_mean, current
from .losses import DiscriminatorObjective, GeneratorObjective, make_fakes
from .model import BridgeGAN
from .noise_memory import NoiseMemory
from .records import listed
from .run_folder import (CHECKPOINTS, METRICS_FILE, SAMPLES, drop_checkpoints_after,
                         drop_metrics_after, latest_checkpoint, metrics_line, numbered_checkpoint,
                         prune_checkpoints, sample_grid)
from .train_config import TrainConfig
from .train_data import (STREAM_INIT, STREAM_LOADER, STREAM_MEMORY, STREAM_SAMPLES, STREAM_STEP,
                         IndexedDataset, ResumableBatchSampler, derive_seed, generator)
from .train_state import Progress, TrainState

SHOWN = {"d/adv": "D adv", "g/adv": "G adv", "g/rec": "rec"}  # the terms progress shows


class Trainer:
    """Trains a BridgeGAN on ``dataset`` (items (image, labels)); see the module doc.

    ``dist``: the process group view (default: torch.distributed's, one process when not
    initialised). Only rank 0 writes files. ``sample_set``: images for the sample grids
    (default: the first ``n_samples`` items of ``dataset``), read here where grids are to
    come (``config.sample_every``).
    """

    def __init__(self, model_config: BridgeGANConfig, config: TrainConfig, dataset: Dataset,
                 out_dir: str | os.PathLike | None = None, dist: DistInfo | None = None,
                 sample_set: Dataset | None = None, progress: bool = True):
        self.model_config, self.config = model_config, config
        self.dist = dist or current()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.device = self._pick_device(config.device)
        self._check_dataset(dataset, model_config)
        self._check_run(dataset)
        self.dataset, self.sample_set = dataset, sample_set or dataset
        self.local_batch = config.batch // self.dist.world_size
        # where grids are to come, their images are read now (on every rank, which all stop
        # alike; kept by rank 0, which draws them): one that cannot be read stops the run
        # before its first update, not at its first grid with the steps since the last
        # checkpoint lost
        self._sample_items = None
        if config.sample_every:
            items = self._read_sample_items()
            self._sample_items = items if self.is_main else None

        self._build_models()
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.gen_params, lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=config.lr,
                                      betas=betas)
        self.memory = NoiseMemory(len(dataset), model_config.noise_dim, config.noise_memory,
                                  seed=derive_seed(config.seed, STREAM_MEMORY), device=self.device,
                                  dtype=self.dtype)
        self.feature_net = self._feature_net(config, model_config)
        self.feature_sha256 = (weights_sha256(config.feature_classifier)
                               if self.feature_net is not None else "")
        self._build_objectives()

        fp16 = config.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)

        self.step = 0          # generator steps done
        self.batches = 0       # global batches consumed
        self.warmup_done = 0   # discriminator attribute warm-up updates done
        self.sampler = ResumableBatchSampler(len(dataset), config.batch, config.seed,
                                             self.dist.rank, self.dist.world_size)
        self._loader_iter = None
        self.stop_signal: int | None = None  # set by request_stop
        self.unreadable = False  # the last read_batches met data it could not read
        self._acc: dict[str, torch.Tensor] = {}
        self._acc_n = 0
        self._log_t0 = time.perf_counter()
        self._log_step0 = 0
        if self.is_main and self.out_dir is not None:  # leftovers of killed writes
            for folder in (CHECKPOINTS, SAMPLES):
                remove_stale(self.out_dir / folder)

    # ----- setup -----------------------------------------------------------------------
    def _pick_device(self, name: str) -> torch.device:
        """``name`` ("cpu", "cuda", "cuda:N") as training runs on it: "cuda" is GPU
        LOCAL_RANK under torchrun, else the current GPU; "cuda:N" becomes the current GPU."""
        problem = device_problem(name, self.dist.enabled)
        if problem:
            raise ValueError(f"device {name!r}: {problem}")
        if name == "cuda":
            return torch.device("cuda", self.dist.local_rank if self.dist.enabled
                                else torch.cuda.current_device())
        device = torch.device(name)
        if device.type == "cuda":  # what torch puts on "the" GPU (pinned batches, caches)
            torch.cuda.set_device(device)  # goes to the one training runs on, not GPU 0
        return device

    def _check_run(self, dataset: Dataset) -> None:
        """Refuse a run the processes, the data or the device cannot make."""
        config = self.config
        if config.batch % self.dist.world_size:
            raise ValueError(f"the global batch ({config.batch}) must be divisible by the number "
                             f"of processes ({self.dist.world_size})")
        if len(dataset) < config.batch:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch "
                             f"({config.batch})")
        paired = config.weights.paired or config.weights.paired_edit
        if paired and not callable(getattr(dataset, "render_labels", None)):
            raise ValueError("the paired loss needs data that can render the true edit "
                             "(render_labels: the procedural faces, --data synthetic); "
                             f"{type(dataset).__name__} cannot")
        if config.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("amp fp16 needs a CUDA device (bf16 or none work on the CPU)")

    def _build_models(self) -> None:
        """The model, initialised from the run's own random stream, on the device in the
        training dtype; G, E and M's parameters; the EMA copy of G, E and M (sharing D)."""
        config = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config.seed, STREAM_INIT))
            self.model = BridgeGAN(self.model_config)
            self.model.initialise(config.init)
        self.dtype = getattr(torch, config.dtype)
        self.model.to(self.device, self.dtype)
        m = self.model
        self.gen_params = [p for mod in (m.generator, m.encoder, m.mapping) for p in mod.parameters()]
        self.ema: BridgeGAN | None = None
        if config.ema > 0:
            self.ema = copy.deepcopy(m)
            for name in ("generator", "encoder", "mapping"):
                getattr(self.ema, name).requires_grad_(False)
            self.ema.discriminator = m.discriminator  # shared: saved raw with the EMA G/E/M
            self.ema_params = [p for mod in (self.ema.generator, self.ema.encoder, self.ema.mapping)
                               for p in mod.parameters()]

    def _build_objectives(self) -> None:
        """G's and D's losses as modules, wrapped in DDP when several processes train."""
        m, weights = self.model, self.config.weights
        self.g_objective: nn.Module = GeneratorObjective(m.generator, m.encoder, m.mapping, weights)
        self.d_objective: nn.Module = DiscriminatorObjective(m.discriminator, weights)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_objective = DDP(self.g_objective, device_ids=ids)
            self.d_objective = DDP(self.d_objective, device_ids=ids)

    @staticmethod
    def _check_dataset(dataset: Dataset, cfg: BridgeGANConfig) -> None:
        attrs = getattr(dataset, "attributes", None)
        if attrs is not None and tuple(attrs) != tuple(cfg.attributes):
            raise ValueError(f"the dataset's attributes {list(attrs)} differ from the model's "
                             f"{list(cfg.attributes)}")
        image, labels = dataset[0][:2]
        s = cfg.image_size
        if tuple(image.shape) != (3, s, s):
            raise ValueError(f"dataset images have shape {tuple(image.shape)}, the model needs "
                             f"(3, {s}, {s})")
        if tuple(labels.shape) != (cfg.n_attrs,):
            raise ValueError(f"dataset labels have shape {tuple(labels.shape)}, the model needs "
                             f"({cfg.n_attrs},)")

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def epoch(self) -> float:
        return self.batches / self.sampler.batches_per_epoch

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    # ----- data and random draws ---------------------------------------------------------
    def _loader(self):
        self.sampler.start = self.batches
        # its own generator for the workers' base seed, which the DataLoader would otherwise
        # draw from the global torch RNG (saved in checkpoints): one draw more on a resume
        loader = DataLoader(IndexedDataset(self.dataset), batch_sampler=self.sampler,
                            generator=generator(self.config.seed, STREAM_LOADER, self.batches),
                            num_workers=self.config.workers,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False,
                            worker_init_fn=worker_ignores_stops if self.config.workers else None)
        return iter(loader)

    def read_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The next ``n`` GLOBAL batches (images, labels, dataset indices) on the device,
        all read before any is used. Where one cannot be read, on any rank (the ranks agree
        once: none waits in a gather), the error is raised with the run where it was
        (``batches``; the loader starts afresh there) and ``unreadable`` set, for ``train``
        to checkpoint the updates done."""
        self.unreadable = False
        if self._loader_iter is None:
            self._loader_iter = self._loader()
        local, err = [], None
        try:
            for _ in range(n):
                local.append(next(self._loader_iter))
        except Exception as exc:  # noqa: BLE001 - re-raised, of the same type
            err = worker_error(exc)
            if isinstance(err, UnreadableImageError):  # a resume would meet it again
                err = UnreadableImageError(
                    f"{err}; the run reads its data in a fixed order: replace that file with "
                    f"a readable image of the same name, then continue with --resume auto")
        if self.dist.enabled:
            failed = all_gather_cat(torch.tensor([[float(err is not None)]], device=self.device),
                                    self.dist).flatten().nonzero().flatten().tolist()
            if failed and err is None:
                err = ValueError(f"rank {failed[0]} could not read its part of the batch "
                                 f"(its error says why)")
        if err is not None:
            self._loader_iter, self.unreadable = None, True
            raise err from None
        self.batches += n
        return [self._global(batch) for batch in local]

    def _global(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's part of a batch on the device, gathered over the ranks."""
        nb = self.device.type == "cuda"
        x, y, idx = batch
        x = x.to(self.device, non_blocking=nb).to(self.dtype)
        y = y.to(self.device, non_blocking=nb).to(self.dtype)
        idx = idx.to(self.device, non_blocking=nb)
        if self.dist.enabled:
            x, y, idx = (all_gather_cat(t, self.dist) for t in (x, y, idx))
        return x, y, idx

    def _draws(self, sub: int) -> dict[str, torch.Tensor]:
        """Random draws of one sub-step for the whole global batch (identical on all ranks)."""
        B, nd = self.config.batch, self.model_config.noise_dim
        g = generator(self.config.seed, STREAM_STEP, self.step, sub)
        draws = {
            "perm": torch.randperm(B, generator=g),
            "alpha": torch.rand(B, generator=g),
            "noise": torch.randn(B, nd, generator=g),
            "r1": torch.randn(B, nd, generator=g),
            "gp_eps": torch.rand(3, B, generator=g),
            "single": torch.rand(B, generator=g),
            "pick": torch.rand(B, generator=g),
        }
        return {k: v.to(self.device, dtype=self.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in draws.items()}

    def _local(self, batch, draws) -> dict[str, torch.Tensor]:
        """This rank's sources, their references (from the whole batch) and draws."""
        x_all, y_all, idx_all = batch
        lo = self.dist.rank * self.local_batch
        sl = slice(lo, lo + self.local_batch)
        ref = draws["perm"][sl]
        yr = self._single_edits(y_all[sl], y_all[ref], draws["single"][sl], draws["pick"][sl])
        out = dict(x=x_all[sl], y=y_all[sl], index=idx_all[sl], xr=x_all[ref], yr=yr,
                   ref_index=idx_all[ref],
                   r1=draws["r1"][sl], alpha=draws["alpha"][sl], gp_eps=draws["gp_eps"][:, sl])
        out["noise"] = self.memory.lookup(out["ref_index"]) if self.memory.enabled else draws["noise"][sl]
        return out

    def _single_edits(self, y: torch.Tensor, yr: torch.Tensor, single: torch.Tensor,
                      pick: torch.Tensor) -> torch.Tensor:
        """The targets: the reference's labels, or for a share ``single_edits`` of the
        samples (draw ``single`` below it) the source's labels with one attribute taken from
        the reference (chosen by ``pick`` among those that differ; conflict rules applied),
        as single-attribute edits are used at inference."""
        share = self.config.single_edits
        if not share:
            return yr
        names = self.model_config.attributes
        y_c, out, pick = y.cpu(), yr.cpu().clone(), pick.cpu()  # one transfer, not one a row
        for k in (single.cpu() < share).nonzero().flatten().tolist():
            differ = (y_c[k] != out[k]).nonzero().flatten()
            if differ.numel():
                j = int(differ[min(int(pick[k] * differ.numel()), differ.numel() - 1)])
                out[k] = apply_edits(y_c[k:k + 1], names, {names[j]: int(out[k, j])})[0]
        return out.to(yr)

    def _refine(self):
        if not self.memory.enabled:
            return None
        B = self.config.batch

        def refine(r0, target, d, mapping):
            return self.memory.refine(r0, target, d, mapping, denominator=B * target[0].numel())
        return refine

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        return all_reduce_mean(t, self.dist)

    # ----- one step ----------------------------------------------------------------------
    def _d_step(self, sub: int, batch) -> dict[str, torch.Tensor]:
        p = self._local(batch, self._draws(sub))
        m = self.model
        with self._autocast():
            fakes, _ = make_fakes(m.generator, m.encoder, m.mapping, p["x"], p["y"], p["xr"], p["yr"],
                                  p["noise"], p["alpha"], self._refine())
            loss, terms = self.d_objective(p["x"], p["y"], fakes, p["gp_eps"],
                                           gp_scale=self.scaler_d.get_scale())
        self._update_d(loss)
        return terms

    def _update_d(self, loss: torch.Tensor) -> None:
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(loss).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()

    def _d_attr_step(self, batch) -> dict[str, torch.Tensor]:
        """One warm-up update of D on BCE(D_cls(X_s), y_s) alone, on ``batch``."""
        p = self._local(batch, self._draws(0))
        with self._autocast():
            loss, terms = self.d_objective(p["x"], p["y"], ())
        self._update_d(loss)
        return terms

    def warm_up(self, deadline: float | None = None) -> dict[str, float]:
        """Run the remaining ``d_attr_warmup`` updates (before the first generator step);
        logs their mean terms to metrics.jsonl with step 0 every ``log_every`` updates and
        at the end. Stops early (no record; ``train`` checkpoints what was done) where the
        next update would pass the wall-clock ``deadline`` (time.monotonic()), judged by
        the longest one so far; where a batch cannot be read, after a checkpoint of the
        updates done."""
        todo = self.config.d_attr_warmup - self.warmup_done if self.step == 0 else 0
        if todo <= 0:
            return {}
        bar, lines = self._progress(total=todo, desc="D attribute warm-up")
        try:
            every, longest = self.config.log_every, 0.0
            for i in range(todo):
                if self._out_of_time(deadline, longest):
                    return {}
                t0 = time.monotonic()
                self._accumulate(self._d_attr_step(self._read(1, i > 0)[0]))
                longest = max(longest, time.monotonic() - t0)
                self.warmup_done += 1
                if every and self.warmup_done % every == 0 and i < todo - 1:
                    self.log()
                    if lines:
                        print(f"D attribute warm-up: {i + 1}/{todo}", file=sys.stderr,
                              flush=True)
                bar.update(1)
        finally:
            bar.close()
        return self.log()

    def _g_step(self, sub: int, batch) -> dict[str, torch.Tensor]:
        p = self._local(batch, self._draws(sub))
        D = self.model.discriminator
        D.requires_grad_(False)
        try:
            with self._autocast():
                loss, terms, r = self.g_objective(
                    p["x"], p["y"], p["xr"], p["yr"], p["noise"], p["r1"], p["alpha"],
                    critic=D, refine=self._refine(), reduce=self._reduce,
                    x_true=self._true_edits(p["index"], p["yr"]),
                    features=None if self.feature_net is None else self.feature_net.features)
            self.opt_g.zero_grad(set_to_none=True)
            self.scaler_g.scale(loss).backward()
            self.scaler_g.step(self.opt_g)
            self.scaler_g.update()
        finally:
            D.requires_grad_(True)
        if self.memory.enabled:
            self.memory.write(all_gather_cat(p["ref_index"], self.dist),
                              all_gather_cat(r.to(self.dtype), self.dist))
        return terms

    def _feature_net(self, config: TrainConfig, model_config: BridgeGANConfig):
        """The frozen classifier of the feature loss (None without it)."""
        if not config.weights.feature:
            return None
        try:
            clf = AttributeClassifier.load(config.feature_classifier)
        except CheckpointError as exc:  # none there, or a broken one
            raise CheckpointError(f"--feature-classifier: {exc}") from None
        try:
            clf.check_fits(model_config.attributes, model_config.image_size)
        except ValueError as exc:
            raise ValueError(f"--feature-classifier {config.feature_classifier}: {exc}") from None
        return clf.to(self.device, self.dtype).requires_grad_(False)

    def _true_edits(self, index: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """Each source rendered with its target labels, for the paired loss (else None)."""
        if not (self.config.weights.paired or self.config.weights.paired_edit):
            return None
        images = [self.dataset.render_labels(int(i), t) for i, t in zip(index.tolist(), target.cpu())]
        return torch.stack(images).to(self.device, self.dtype)

    def ema_decay(self) -> float:
        """The EMA decay at this step: min(ema, (1 + step) / (10 + step)), so that early
        weights are not dominated by the initial ones (0.999^750 is still 0.47)."""
        return min(self.config.ema, (1 + self.step) / (10 + self.step))

    def learning_rate(self) -> float:
        """The learning rate of the step about to be taken: config.lr, or with the cosine
        schedule lr * (1 + cos(pi * step / steps)) / 2. A function of the step alone, so
        that a resumed run continues the schedule exactly."""
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return cfg.lr
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(self.step, cfg.steps) / cfg.steps))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is not None:
            torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.gen_params],
                                 1.0 - self.ema_decay())

    def _read(self, n: int, progressed: bool):
        """``read_batches(n)``; where the data cannot be read, a checkpoint of the updates
        this run did (``progressed``) before the error goes on (every rank gets the error
        and calls ``save``, a collective)."""
        try:
            return self.read_batches(n)
        except Exception:
            if self.unreadable and self.out_dir is not None and progressed:
                self.save()
            raise

    def train_step(self, batches: list | None = None) -> dict[str, torch.Tensor]:
        """n_d discriminator updates, one generator update, the EMA update, on ``batches``
        (the step's n_d + 1, ``read_batches``; read here when None: all before the first
        update, so that a step whose data cannot be read leaves the run at its start).
        Returns the generator terms and the last discriminator terms (detached tensors)."""
        batches = self.read_batches(self.config.n_d + 1) if batches is None else batches
        terms: dict[str, torch.Tensor] = {}
        lr = self.learning_rate()
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        for sub in range(self.config.n_d):
            terms.update(self._d_step(sub, batches[sub]))
        terms.update(self._g_step(self.config.n_d, batches[-1]))
        self._update_ema()
        self.step += 1
        return terms

    # ----- the loop ----------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask ``train`` to stop after the step under way, with its final checkpoint (what
        `bridgegan train` does on SIGTERM / SIGINT); safe to call from a signal handler."""
        self.stop_signal = signum

    def _out_of_time(self, deadline: float | None, margin: float = 0.0) -> bool:
        """Whether the wall-clock ``deadline`` is less than ``margin`` seconds away (what the
        caller's next step and final checkpoint may take), or a stop was requested, on any
        rank (all ranks agree: in a DDP run a signal may reach the ranks at different
        steps)."""
        late = self.stop_signal is not None or (deadline is not None
                                                and time.monotonic() + margin > deadline)
        if not self.dist.enabled:
            return late
        # each rank's (late, signal number): a stop requested on one rank is every rank's,
        # so that rank 0 (which prints and sets the exit status) reports it too
        flags = all_gather_cat(torch.tensor([[float(late), float(self.stop_signal or 0)]],
                                            device=self.device), self.dist)
        signum = int(flags[:, 1].max().item())
        if self.stop_signal is None and signum:
            self.stop_signal = signum
        return bool(flags[:, 0].max().item() > 0)

    def train(self, steps: int | None = None, time_limit: float | None = None) -> dict[str, float]:
        """Train until ``steps`` generator steps are done (default config.steps) or
        ``time_limit`` seconds would pass, with logs, samples and checkpoints at their
        intervals and a final checkpoint (so a time-limited run resumes where it stopped).
        The run stops where its next step and the final checkpoint would pass the limit,
        judged by the longest step so far (with its logs and samples) and the last
        checkpoint's time in this run (none until one is written): it ends within the limit
        when steps and checkpoints take about as long as those before. A step whose data
        cannot be read raises after a checkpoint of the steps done before it."""
        cfg = self.config
        if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(
                time_limit, numbers.Real) or not 0 < time_limit < math.inf):
            raise ValueError(f"time_limit must be a finite number of seconds > 0 (or None), "
                             f"got {time_limit!r}")
        deadline = None if time_limit is None else time.monotonic() + time_limit
        target = cfg.steps if steps is None else steps
        last: dict[str, float] = {}
        self._log_t0, self._log_step0 = time.perf_counter(), self.step
        saved_at, longest, save_s = None, 0.0, 0.0  # the longest step, the last save's time
        begun = self.step
        self.warm_up(deadline)
        # a warm-up stopped by the limit or a signal ends the run: after a generator step it
        # would never be completed (a resume warms up only at step 0)
        warming = self.step == 0 and self.warmup_done < cfg.d_attr_warmup
        bar, lines = self._progress(total=target, initial=self.step, desc="train")
        try:
            while (not warming and self.step < target
                   and not self._out_of_time(deadline, longest + save_s)):
                t0 = time.monotonic()
                batches = self._read(self.config.n_d + 1, begun < self.step != saved_at)
                terms = self.train_step(batches)
                self._accumulate(terms)
                bar.update(1)
                if cfg.log_every and self.step % cfg.log_every == 0:
                    last = self.log()
                    shown = ", ".join(f"{label} {last[k]:.3g}" for k, label in SHOWN.items()
                                      if k in last)
                    bar.set_postfix_str(shown)
                    if lines:
                        print(f"train: step {self.step}/{target}: {shown}, "
                              f"{last['sec_per_step']:.3g} s/step", file=sys.stderr, flush=True)
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    self.save_samples()
                longest = max(longest, time.monotonic() - t0)  # the checkpoint apart
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    t1 = time.monotonic()
                    self.save()
                    saved_at, save_s = self.step, time.monotonic() - t1
        finally:
            bar.close()
        if self.out_dir is not None and saved_at != self.step:
            self.save()  # before the last record: the checkpoint keeps the steps not yet logged
        if self._acc_n:  # stopped between two --log-every steps (a resume drops this record)
            last = self.log(partial=True)
        return last

    def _progress(self, **kw):
        """A bar (rank 0, ``progress``, stderr a terminal; else a disabled one) and whether
        progress is printed as lines instead (stderr a file or a pipe)."""
        shown = self.progress and self.is_main
        return (progress_bar(show=shown and not progress_lines(), unit="step",
                             dynamic_ncols=True, **kw), shown and progress_lines())

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float()
            self._acc[k] = self._acc[k] + v if k in self._acc else v
        self._acc_n += 1

    def log(self, partial: bool = False) -> dict[str, float]:
        """Mean of the terms since the last log (over all ranks), appended to metrics.jsonl.
        ``partial``: a record where the run stopped, not a --log-every one (marked so)."""
        if not self._acc_n:
            return {}
        keys = sorted(self._acc)
        values = self._reduce(torch.stack([self._acc[k] for k in keys]) / self._acc_n).tolist()
        now = time.perf_counter()
        dt = now - self._log_t0
        steps = self.step - self._log_step0
        record: dict[str, float] = {"step": self.step, "epoch": round(self.epoch, 4),
                                  "images": self.batches * self.config.batch,
                                  "lr": self.learning_rate()}
        record.update({k: v for k, v in zip(keys, values)})
        if partial:
            record["partial"] = True
        if steps:
            record["sec_per_step"] = dt / steps
            record["images_per_sec"] = steps * (self.config.n_d + 1) * self.config.batch / max(dt, 1e-9)
        self._acc, self._acc_n = {}, 0
        self._log_t0, self._log_step0 = now, self.step
        if self.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            try:
                with open(self.out_dir / METRICS_FILE, "a") as f:
                    f.write(metrics_line(record))
            except OSError as exc:  # a full disk: a line cut short goes on resume
                raise OSError(exc.errno, f"cannot append to {self.out_dir / METRICS_FILE}: "
                                         f"{exc.strerror or exc}") from None
        return record

    # ----- samples ---------------------------------------------------------------------
    def inference_model(self) -> BridgeGAN:
        """The EMA model (raw D) when EMA is on, else the raw model."""
        return self.state().inference_model

    def _read_sample_items(self) -> list:
        n = min(max(self.config.n_samples, 1), len(self.sample_set))
        try:
            return [self.sample_set[i] for i in range(n)]
        except UnreadableImageError as exc:
            raise UnreadableImageError(f"{exc}; it is one of the {n} images the sample grids "
                                       f"show: replace it with a readable image") from None

    @torch.no_grad()
    def sample_rows(self) -> list[torch.Tensor]:
        """Rows of the sample grid: sources, reconstructions, one label edit per chosen
        attribute (flipped, with the conflict rules), references, reference edits."""
        cfg, mc = self.config, self.model_config
        items = self._sample_items or self._read_sample_items()
        n = len(items)
        x = torch.stack([it[0] for it in items]).to(self.device, self.dtype)
        y = torch.stack([torch.as_tensor(it[1]) for it in items]).to(self.device, self.dtype)
        g = generator(cfg.seed, STREAM_SAMPLES)
        noise = torch.randn(n, mc.noise_dim, generator=g).to(self.device, self.dtype)
        model = self.inference_model()
        rows = [x, model.reconstruct(x, noise=noise)]
        k = min(cfg.sample_edits, mc.n_attrs)
        chosen = sorted({round(i * (mc.n_attrs - 1) / max(k - 1, 1)) for i in range(k)}) if k else []
        for a in chosen:
            name = mc.attributes[a]
            target = y.clone()
            for value in (0.0, 1.0):
                rows_to_set = y[:, a] != value
                if rows_to_set.any():
                    target[rows_to_set] = apply_edits(y[rows_to_set], mc.attributes, {name: value})
            rows.append(model.translate(x, y, target, noise=noise, strength=1.0))
        if n > 1:
            refs, yr = x.roll(1, 0), y.roll(1, 0)
            rows += [refs, model.translate_reference(x, refs, y, yr, strength=1.0)]
        return rows

    def save_samples(self, path: str | os.PathLike | None = None) -> Path | None:
        if not self.is_main or (path is None and self.out_dir is None):
            return None
        from .data import save_grid

        path = Path(path) if path is not None else sample_grid(self.out_dir, self.step)
        rows = self.sample_rows()
        save_grid(torch.cat(rows).float().clamp(-1, 1).cpu(), path, nrow=rows[0].shape[0])
        return path

    # ----- checkpoints -----------------------------------------------------------------
    def state(self, log_acc: dict | None = None) -> TrainState:
        """A view of what a checkpoint of this run holds, at this step (with ``log_acc``,
        the terms not yet logged: see ``_log_acc``)."""
        return TrainState(self.model, self.ema, self.opt_g, self.opt_d, self.memory,
                          self.scaler_g, self.scaler_d, self.config, len(self.dataset),
                          self.dist.world_size, self.sampler.batches_per_epoch,
                          Progress(self.step, self.batches, self.warmup_done), log_acc,
                          self.feature_sha256)

    def _log_acc(self) -> dict:
        """The terms summed since the last record, one value per rank (gathered: a
        collective in a DDP run, where every rank calls ``save``, as ``train`` does)."""
        keys = sorted(self._acc)
        if not keys:
            return {"n": 0, "terms": {}}
        values = all_gather_cat(torch.stack([self._acc[k] for k in keys]).unsqueeze(0), self.dist)
        return {"n": self._acc_n, "terms": {k: values[:, j].clone() for j, k in enumerate(keys)}}

    def _restore_log_acc(self, log_acc: dict) -> None:
        """This rank's sums of a saved ``_log_acc`` (under another world size their mean:
        the next record then matches to rounding)."""
        def mine(v: torch.Tensor) -> torch.Tensor:
            v = v.reshape(-1).to(self.device)
            return v[self.dist.rank] if v.numel() == self.dist.world_size else v.mean()
        self._acc = {k: mine(v) for k, v in log_acc["terms"].items()}
        self._acc_n = log_acc["n"] if self._acc else 0

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write a checkpoint folder (rank 0 writes it; in a DDP run every rank must call
        this, as ``train`` does: the loss sums not yet logged are gathered over the ranks
        first, and every rank returns once the folder is in place, or raises where rank 0
        could not write it: collectives); default out_dir/checkpoints/step-NNNNNNNN.

        Numbered checkpoints beyond ``keep_checkpoints`` are removed, never the one just
        written (``prune_checkpoints``). A diverged run (NaN or Inf weights) is not saved: a
        ValueError says so, and the earlier checkpoints stay (``_check_finite``).
        """
        self._check_finite()
        log_acc = self._log_acc()
        written, err = None, None
        if self.is_main:
            try:
                written = self._write(path, log_acc)
            except Exception as exc:  # noqa: BLE001 - raised below, once the ranks agree
                err = exc
        if self.dist.enabled:  # every rank returns once the checkpoint is in place: a rank
            # that exits before (a stop, an error) has torchrun kill rank 0 mid-write
            ok = all_gather_cat(torch.tensor([[float(err is None)]], device=self.device),
                                self.dist)
            if err is None and not bool(ok.all()):
                err = OSError("rank 0 could not write the checkpoint (its error says why)")
        if err is not None:
            raise err
        return written

    def _write(self, path, log_acc: dict) -> Path:
        """Rank 0's part of ``save``: the folder, then the pruning."""
        if path is None:
            if self.out_dir is None:
                raise ValueError("no checkpoint path given and the trainer has no out_dir")
            path = numbered_checkpoint(self.out_dir, self.step)
        path = self.state(log_acc).save(path)
        if self.out_dir is not None and path.parent == self.out_dir / CHECKPOINTS:
            prune_checkpoints(self.out_dir, self.config.keep_checkpoints, path)
        return path

    def _check_finite(self) -> None:
        """Refuse (ValueError) to checkpoint NaN or Inf weights or noise memory: a resume
        refuses them, and the checkpoint would prune the earlier, good ones. Every rank of a
        DDP run holds the same weights, so every rank refuses alike."""
        tensors = self.state().network_tensors()
        if self.memory.table is not None:
            tensors["noise_memory"] = self.memory.table
        bad = nonfinite(tensors)
        if not bad:
            return
        last = latest_checkpoint(self.out_dir) if self.out_dir is not None else None
        raise ValueError(
            f"the run diverged: NaN or Inf in {len(bad)} tensor(s) at step {self.step} "
            f"({listed(bad, 4)}); no checkpoint written, the earlier ones are kept"
            + (f" (the latest: {last}; resume from it with a lower --lr)" if last else ""))

    def init_weights(self, path: str | os.PathLike, widen: bool = False) -> None:
        """Start from the weights of checkpoint folder ``path`` (its model.safetensors: G/E/M,
        the EMA ones for a trained checkpoint, and D), raw and EMA alike; the optimisers,
        the noise memory and the step start afresh (fine-tuning, or continuing a shipped
        model whose training state is gone). ``widen``: this model may be a widening of the
        checkpoint's (``widen.widen_into``)."""
        self.state().load_weights(path, widen)

    def load(self, path: str | os.PathLike) -> list[Path]:
        """Restore a checkpoint written by ``save`` so that training continues exactly;
        metrics.jsonl loses the records past its step (logged again from there), and
        out_dir the numbered checkpoints past it (the course the run leaves): returned."""
        log_acc: dict = {}
        progress = self.state(log_acc).restore(path)
        self.step, self.batches, self.warmup_done = progress
        self._restore_log_acc(log_acc)
        self._loader_iter = None
        if not (self.is_main and self.out_dir is not None):
            return []
        drop_metrics_after(self.out_dir, self.step)
        return drop_checkpoints_after(self.out_dir, self.step)
