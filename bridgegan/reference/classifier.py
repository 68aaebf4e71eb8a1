"""The attribute classifier the evaluation uses to judge edits, trained by the project on
the dataset in use (so it does not share the discriminator's blind spots)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..exits import worker_ignores_stops
from ..files import read_small_text, sha256_hex
from ..progress import bar as progress_bar
from .attributes import resolve_attributes
from .checkpoint import nonfinite, read_tensors, write_folder_atomic, write_tensors
from .classifier_defaults import BATCH, KERNEL, KERNELS, LR, MAX_WIDTH, SAVE_EVERY, STEPS, WIDTH
from .data.loader_errors import worker_error

CONFIG_FILE, WEIGHTS_FILE = "classifier.json", "classifier.safetensors"
REPORT_FILE = "report.json"  # `bridgegan train-classifier` writes its report beside them
# an interrupted run's state, in its --out: weights and Adam's moments, and what it was
STATE_FOLDER, STATE_JSON, STATE_TENSORS = "state", "state.json", "state.safetensors"
STATE_FORMAT = "bridgegan-classifier-state-1"
STATE_FILES = (f"{STATE_FOLDER}/{STATE_JSON}", f"{STATE_FOLDER}/{STATE_TENSORS}")
SAVED_FILES = (CONFIG_FILE, WEIGHTS_FILE, REPORT_FILE)  # a saved classifier's files


class AttributeClassifier(nn.Module):
    """Four stride-2 convolutions (``kernel`` one of KERNELS), global average pooling, one
    logit per attribute. The kernel and width let a classifier used in training differ in
    architecture from the one that judges (``bridgegan eval``)."""

    def __init__(self, attributes: tuple[str, ...], image_size: int, width: int = WIDTH,
                 kernel: int = KERNEL):
        super().__init__()
        if type(kernel) is not int or kernel not in KERNELS:  # 4.0 == 4, but no size
            raise ValueError(f"classifier kernel must be one of {KERNELS}, got {kernel!r}")
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= MAX_WIDTH:
            raise ValueError(f"classifier width must be an integer from 1 to {MAX_WIDTH}, got "
                             f"{width!r}")
        # four stride-2 convolutions (padding 1): kernel 4 halves the size, so the last one
        # needs 16 px or more; kernel 3 rounds up and takes any size
        low = 16 if kernel == 4 else 1
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < low:
            raise ValueError(f"classifier image size must be an integer >= {low} (kernel "
                             f"{kernel}), got {image_size!r}")
        self.attributes, self.image_size = tuple(attributes), image_size
        self.width, self.kernel = width, kernel
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel, 2, 1) for a, b in zip(chans, chans[1:]))
        self.head = nn.Linear(chans[-1], len(self.attributes))

    def check_fits(self, attributes, image_size: int) -> None:
        """ValueError unless this classifier judges ``image_size`` px images of ``attributes``
        (the model's), saying which differs."""
        if self.attributes != tuple(attributes):
            raise ValueError(f"classifier attributes {self.attributes} differ from the "
                             f"model's {tuple(attributes)}: train one with `bridgegan "
                             f"train-classifier --attributes {','.join(attributes)}`")
        if self.image_size != image_size:
            raise ValueError(f"the classifier was trained at {self.image_size} px, the model "
                             f"makes {image_size} px images: train one at that size")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The activations of the four convolutions (for a feature-matching loss)."""
        out = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1].mean(dim=(2, 3)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """0/1 labels (N, A)."""
        self.eval()
        p = next(self.parameters())
        return torch.cat([(self(x[i:i + batch].to(p)) > 0).float().cpu()
                          for i in range(0, x.shape[0], batch)])

    def save(self, path: str | Path, report: dict | None = None) -> Path:
        """Write folder ``path`` (atomically), with ``report`` (its training report) as
        REPORT_FILE; an existing one is replaced only when it holds nothing but
        ``SAVED_FILES`` and ``STATE_FILES`` (an earlier classifier, the state of the run
        this save ends)."""
        meta = {"attributes": list(self.attributes), "image_size": self.image_size,
                "width": self.width, "kernel": self.kernel}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        writers = {CONFIG_FILE: lambda p: p.write_text(json.dumps(meta, indent=2)),
                   WEIGHTS_FILE: lambda p: write_tensors(tensors, p)}
        if report is not None:
            writers[REPORT_FILE] = lambda p: p.write_text(json.dumps(report, indent=2))
        try:
            return write_folder_atomic(path, writers, replaces=SAVED_FILES + STATE_FILES)
        except OSError as exc:  # a full disk, a quota (the error names the file)
            raise OSError(exc.errno, f"{exc.strerror or exc} (the classifier was not "
                                     f"written: {path} is as it was)") from None

    @classmethod
    def load(cls, path: str | Path) -> "AttributeClassifier":
        from .checkpoint import CheckpointError, load_state

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"no classifier at {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            meta = json.loads(read_small_text(path / CONFIG_FILE))
        except ValueError as exc:  # not JSON, not UTF-8, too large
            raise CheckpointError(f"{path / CONFIG_FILE} is not a JSON classifier "
                                  f"configuration: {exc}") from None
        fields = {"attributes": list, "image_size": int, "width": int}
        bad = [k for k, t in fields.items() if not isinstance(meta, dict)
               or not isinstance(meta.get(k), t) or isinstance(meta.get(k), bool)]
        if bad:
            raise CheckpointError(f"{path / CONFIG_FILE} lacks valid {', '.join(bad)}: it must "
                                  f"be an object with attributes (a list of names), image_size "
                                  f"and width (integers)")
        try:
            model = cls(resolve_attributes(meta["attributes"]), meta["image_size"],
                        meta["width"], meta.get("kernel", 4))  # written before the option: 4
        except ValueError as exc:  # names, sizes or kernel out of range
            raise CheckpointError(f"{path / CONFIG_FILE}: {exc}") from None
        load_state(model, read_tensors(path / WEIGHTS_FILE), str(path / WEIGHTS_FILE))
        return model.eval()


def weights_sha256(path: str | Path) -> str:
    """The sha256 of the weights in classifier folder ``path``: what a training run that
    matches its features records, so that its resume notices another classifier there."""
    return sha256_hex((Path(path) / WEIGHTS_FILE).read_bytes())


class ClassifierStopped(Exception):
    """``train_classifier`` stopped (``stop()``) after ``step`` steps, its state saved."""

    def __init__(self, step: int):
        super().__init__(f"classifier training stopped at step {step}")
        self.step = step


def train_classifier(train_set, val_set, steps: int = STEPS, batch: int = BATCH, lr: float = LR,
                     width: int = WIDTH, device: str = "cpu", seed: int = 0, workers: int = 0,
                     progress: bool = True, kernel: int = KERNEL,
                     state: str | Path | None = None, resume: bool = False,
                     settings: Mapping | None = None,
                     stop: Callable[[], bool] | None = None) -> tuple[AttributeClassifier, dict]:
    """Train on ``train_set`` with BCE; returns the classifier and its per-attribute
    validation accuracy on ``val_set``. With ``state`` (a folder) the run keeps its state
    there every SAVE_EVERY steps and once ``stop()`` turns true after a step (it then raises
    ClassifierStopped), and with ``resume`` continues the run kept there, which must have
    had these arguments and ``settings`` (what else the caller's run depends on, the data
    spec say): the result is the uninterrupted run's."""
    from torch.utils.data import DataLoader, RandomSampler

    torch.manual_seed(seed)
    image_size = train_set[0][0].shape[-1]
    model = AttributeClassifier(tuple(train_set.attributes), image_size, width, kernel).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    run = {**(settings or {}), "attributes": list(model.attributes), "image_size": image_size,
           "train_items": len(train_set), "steps": steps, "batch": batch, "lr": lr,
           "width": width, "kernel": kernel, "seed": seed}
    start, seconds = _load_state(Path(state), run, model, opt) if resume else (0, 0.0)
    sampler = RandomSampler(train_set, replacement=True, num_samples=steps * batch,
                            generator=torch.Generator().manual_seed(seed))
    # the batches of the steps left: a resumed run draws the whole order and skips the rest
    loader = DataLoader(train_set, batch_size=batch, sampler=list(sampler)[start * batch:],
                        num_workers=workers,
                        worker_init_fn=worker_ignores_stops if workers else None)
    t0 = time.perf_counter()
    bar = progress_bar(loader, total=steps, initial=start, desc="classifier", show=progress)
    step = start
    try:
        for x, y in bar:
            loss = F.binary_cross_entropy_with_logits(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # at the bar's pace
            stopping = stop is not None and step < steps and stop()
            if state is not None and step < steps and (stopping or step % SAVE_EVERY == 0):
                _check_finite(model, step, lr, state)  # no state a resume would refuse
                _save_state(Path(state), run, step, seconds + time.perf_counter() - t0,
                            model, opt)
            if stopping:
                break
    except Exception as exc:  # noqa: BLE001 - re-raised, of the same type
        err = worker_error(exc)
        if err is exc:
            raise
        raise err from None
    finally:
        bar.close()
    if step < steps:
        raise ClassifierStopped(step)
    _check_finite(model, steps, lr, state)  # nothing could load it (load_state refuses it)
    xs, ys = zip(*(val_set[i] for i in range(len(val_set))))
    pred = model.predict(torch.stack(xs))
    acc = (pred == torch.stack(ys)).float().mean(0)
    report = {"val_accuracy": {a: round(v, 4) for a, v in zip(model.attributes, acc.tolist())},
              "val_accuracy_mean": round(acc.mean().item(), 4), "steps": steps,
              "seconds": round(seconds + time.perf_counter() - t0, 1)}
    return model.cpu().eval(), report


def _check_finite(model: nn.Module, step: int, lr: float, state) -> None:
    """A ValueError where training diverged (NaN or Inf weights after ``step`` steps), which
    asks for a lower learning rate, and a new run without ``state``'s (a resume diverges
    alike)."""
    bad = nonfinite(model.state_dict())
    if bad:
        fresh = "" if state is None else f" in a new run (remove {state}: a resume diverges alike)"
        raise ValueError(f"classifier training diverged: NaN or Inf weights in "
                         f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} after {step} "
                         f"steps at lr {lr}; lower the learning rate{fresh}")


def _save_state(folder: Path, run: dict, step: int, seconds: float, model: nn.Module,
                opt: torch.optim.Optimizer) -> None:
    """The run's state after ``step`` steps (weights, Adam's moments), written atomically."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, moments in opt.state_dict()["state"].items():
        tensors.update({f"adam.{i}.{k}": torch.as_tensor(v).detach().cpu().contiguous()
                        for k, v in moments.items()})
    meta = {"format": STATE_FORMAT, "run": run, "step": step, "seconds": seconds}
    write_folder_atomic(folder, {STATE_JSON: lambda p: p.write_text(json.dumps(meta, indent=1)),
                                 STATE_TENSORS: lambda p: write_tensors(tensors, p)})


def _load_state(folder: Path, run: dict, model: nn.Module,
                opt: torch.optim.Optimizer) -> tuple[int, float]:
    """Load the state ``_save_state`` kept in ``folder`` into ``model`` and ``opt``, after
    checking that it is of a run with ``run``'s settings; (its step, its seconds)."""
    from .checkpoint import CheckpointError, load_state

    path = folder / STATE_JSON
    try:
        meta = json.loads(read_small_text(path))
        kept, step, seconds = meta["run"], meta["step"], float(meta["seconds"])
        if meta["format"] != STATE_FORMAT or type(step) is not int or not isinstance(kept, dict):
            raise ValueError("not a classifier training state")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is no classifier training state ({exc}): remove "
                              f"{folder} to start afresh") from None
    other = [f"{k} {kept.get(k)!r} there, {v!r} here" for k, v in run.items() if kept.get(k) != v]
    if other:
        raise ValueError(f"{folder} holds the state of a run with other settings "
                         f"({'; '.join(other)}): give that run's options again to continue "
                         f"it, or remove {folder} to start afresh")
    tensors = read_tensors(folder / STATE_TENSORS)
    load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
               str(folder / STATE_TENSORS))
    params = dict(enumerate(model.parameters()))  # Adam's indices, in the model's order
    moments = {i: {k.split(".", 2)[2]: v for k, v in tensors.items()
                   if k.startswith(f"adam.{i}.")} for i in params}
    wrong = [f"step {step}"] if not 0 < step < run["steps"] else []
    wrong += [f"Adam's moments of weight {i}" for i, m in moments.items()
              if set(m) != {"step", "exp_avg", "exp_avg_sq"} or m["step"].numel() != 1
              or any(m[k].shape != params[i].shape or m[k].dtype != params[i].dtype
                     for k in ("exp_avg", "exp_avg_sq"))]
    wrong += nonfinite({f"{k} of weight {i}": v for i, m in moments.items() for k, v in m.items()})
    if wrong:
        raise CheckpointError(f"{folder} holds a damaged classifier training state (wrong or "
                              f"non-finite: {', '.join(wrong[:4])}): remove it to start afresh")
    opt.load_state_dict({"state": moments, "param_groups": opt.state_dict()["param_groups"]})
    return step, seconds
