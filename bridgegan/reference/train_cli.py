"""`bridgegan train`: train BridgeGAN on CelebA, a folder of images or the procedural faces.

Wired into bridgegan/cli.py through ``add_arguments(parser)`` and ``run(args)``; also
runnable as ``python -m bridgegan.reference.train_cli`` (which is what torchrun launches:
``torchrun --nproc_per_node=4 -m bridgegan.reference.train_cli --data celeba:... ``).
See docs/TRAINING.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from .. import threads
from ..argtypes import SEED, Parser, absolute_path, add_device, positive_float
from ..exits import end, signal_status, signals_deferred, stop_on_signals, stopped_status
from ..files import write_file_atomic
from ..path_checks import check_apart, check_writable_folder, prepare_file_targets
from ..warning_filters import one_line_warnings
from .config import INT_RANGES, BridgeGANConfig
from .data import registry as data_registry
from .data.split_modes import INDEX_TRAIN, SPLIT_MODES
from .loss_weights import LossWeights
from .noise_modes import MODES as NOISE_MODES
from .presets import PRESET_RESOLUTIONS
from .train_config import TrainConfig
from .train_modes import AMP_MODES, INIT_SCHEMES, LR_SCHEDULES, TRAIN_DTYPES

if TYPE_CHECKING:
    from .distributed import DistInfo

RUN_FILE = "run.json"  # the run's command line and configurations, beside its metrics

# Options that define the architecture (None = not given): BridgeGANConfig field -> help,
# to which the field's default (the paper's) is added.
_ARCH_OPTIONS = {
    "g_width": "generator base width",
    "g_downs": "generator down/up blocks",
    "e_width": "encoder base width",
    "e_blocks": "encoder middle blocks",
    "latent_channels": "channels of the latent code S",
    "spade_hidden": "SPADE hidden channels",
    "mapping_channels": "channels of the mapping net's 4x4 start",
    "noise_dim": "noise vector size",
    "d_width": "discriminator base width",
    "d_downs": "discriminator down blocks",
}
# TrainConfig fields set from the option of the same name; all but the loss weights.
_TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig) if f.name != "weights")
# LossWeights field -> (option, help), to which the field's default is added.
_WEIGHT_OPTIONS = {
    "adv": ("w_adv", "generator adversarial term"),
    "attr": ("w_attr", "generator attribute BCE on the fakes"),
    "rec": ("w_rec", "reconstruction L1"),
    "latent": ("w_latent", "latent similarity L1(S_rand, S_ref)"),
    "cycle": ("w_cycle", "latent cycle terms"),
    "mode_seeking": ("w_ms", "mode seeking"),
    "gp": ("w_gp", "WGAN-GP gradient penalty"),
    "d_attr": ("w_d_attr", "discriminator attribute BCE on real images"),
    "paired": ("w_paired", "not in the paper: L1 of the three fakes to the true edit, for "
                           "data that renders it (--data synthetic)"),
    "paired_edit": ("w_paired_edit", "not in the paper: the same L1 over only the pixels the "
                                     "true edit changes"),
    "feature": ("w_feature", "not in the paper: the --feature-classifier's activations of the "
                             "fakes and reconstructions matched to those of the true images"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the training options to ``p``."""
    g = p.add_argument_group("data")
    data_registry.add_option(g, "training data")
    g.add_argument("--attributes", default=None,
                   help="attribute preset (bridgegan, stargan, attgan) or comma-separated "
                        "CelebA names (default: the dataset's default list)")
    g.add_argument("--split-mode", choices=SPLIT_MODES, default="index",
                   help=f"CelebA split: 'index' = first {INDEX_TRAIN:,} images for training as "
                        "in the official code, 'official' = list_eval_partition.txt (default: "
                        "%(default)s)")
    g.add_argument("--workers", type=int, default=TrainConfig.workers,
                   help="DataLoader worker processes per training process (default: %(default)s)")

    g = p.add_argument_group("model")
    g.add_argument("--resolution", type=int, default=None,
                   help=f"image size, a power of two >= {INT_RANGES['image_size'][0]} (default "
                        f"{BridgeGANConfig.image_size}; presets "
                        f"{'/'.join(map(str, PRESET_RESOLUTIONS))} use the paper widths)")
    g.add_argument("--config", default=None,
                   help="model configuration: a JSON file (e.g. a checkpoint's config.json), a "
                        "checkpoint folder or a JSON string; --resolution and width options "
                        "override its fields")
    for name, text in _ARCH_OPTIONS.items():
        g.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"{text} (paper {getattr(BridgeGANConfig, name)})")

    g = p.add_argument_group("optimisation")
    g.add_argument("--batch", type=int, default=None,
                   help="GLOBAL batch size, split evenly over the processes (default: "
                        f"{TrainConfig.batch})")
    g.add_argument("--n-d", type=int, default=None,
                   help="discriminator steps per generator step, each on a fresh batch "
                        f"(default: {TrainConfig.n_d})")
    g.add_argument("--steps", type=int, default=None,
                   help="total generator steps to reach (also on resume; default: "
                        f"{TrainConfig.steps}, about 100 epochs of CelebA at batch "
                        f"{TrainConfig.batch})")
    g.add_argument("--lr", type=float, default=None,
                   help=f"Adam learning rate for G/E/M and D (default: {TrainConfig.lr:g})")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="'constant' (the paper) or 'cosine': from --lr at step 0 to 0 at "
                        "--steps, so set --steps to what the run will reach; not in the paper "
                        f"(default: {TrainConfig.lr_schedule})")
    g.add_argument("--beta1", type=float, default=None,
                   help=f"Adam beta1 (default: {TrainConfig.beta1:g})")
    g.add_argument("--beta2", type=float, default=None,
                   help=f"Adam beta2 (default: {TrainConfig.beta2:g})")
    g.add_argument("--ema", type=float, default=None,
                   help="EMA decay of G/E/M used for samples and model.safetensors; 0 turns "
                        f"EMA off (default: {TrainConfig.ema:g})")
    g.add_argument("--noise-memory", choices=NOISE_MODES, default=None,
                   help="LEM noise: 'official' = per-image memory refined by the official "
                        "(ascent) step, 'descent' = the same with the step sign flipped, "
                        f"'off' = fresh N(0,1) noise (default: {TrainConfig.noise_memory})")
    g.add_argument("--d-attr-warmup", type=int, default=None,
                   help="updates of D on the real-image attribute loss alone before the first "
                        "generator step; not in the paper: at small batches the head otherwise "
                        f"stays at chance (default: {TrainConfig.d_attr_warmup})")
    g.add_argument("--single-edits", type=float, default=None,
                   help="share of the samples whose target takes one attribute from the "
                        "reference instead of all its labels, as single edits are used at "
                        f"inference; not in the paper (default: {TrainConfig.single_edits:g})")
    g.add_argument("--feature-classifier", type=absolute_path, default=None, metavar="FOLDER",
                   help="a classifier from `bridgegan train-classifier` whose activations "
                        "--w-feature matches; not in the paper. Train it with another kernel "
                        "and seed (at least) than the classifier that judges the model. The run "
                        "records its absolute path and its weights' sha256: a resume warns "
                        "where the folder holds another classifier")
    g.add_argument("--seed", type=SEED, default=None,
                   help="seed of the initialisation, data order and all per-step draws "
                        f"(default: {TrainConfig.seed})")
    g.add_argument("--init", choices=INIT_SCHEMES, default=None,
                   help="how a fresh run draws its weights: 'torch' (PyTorch's layer "
                        "defaults) or 'xavier' as the authors' code (Glorot-uniform, zero "
                        "biases; slower here, see docs/TRAINING.md); --resume and --init-from "
                        "keep their checkpoint's weights, but for the channels --widen adds "
                        f"(default: {TrainConfig.init})")

    g = p.add_argument_group("loss weights")
    for f in fields(LossWeights):
        option, text = _WEIGHT_OPTIONS[f.name]
        g.add_argument("--" + option.replace("_", "-"), type=float, default=None,
                       help=f"{text} (default: {f.default:g})")

    g = p.add_argument_group("output")
    g.add_argument("--out", default="runs/bridgegan",
                   help="output folder: checkpoints/, samples/, metrics.jsonl; a run without "
                        "--resume refuses one holding an earlier run's checkpoints or metrics "
                        "(default: %(default)s)")
    g.add_argument("--resume", default=None,
                   help="checkpoint folder to resume from, or 'auto' for the latest checkpoint "
                        "under --out (starts fresh when there is none)")
    g.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from the weights of this checkpoint folder (an inference "
                        "checkpoint, e.g. bridgegan/assets/default, will do) with fresh "
                        "optimisers at step 0; ignored when --resume auto finds a checkpoint")
    g.add_argument("--widen", action="store_true",
                   help="with --init-from: the model options may widen the checkpoint's "
                        "(g/e/d width, latent channels, SPADE hidden, mapping channels); its "
                        "weights fill the leading channels and the new channels' inputs start "
                        "at zero, so training starts from what the checkpoint computed")
    g.add_argument("--ckpt-every", type=int, default=None,
                   help="checkpoint every N generator steps, 0 = only at the end (default: "
                        f"{TrainConfig.ckpt_every})")
    g.add_argument("--keep-checkpoints", type=int, default=None,
                   help="numbered checkpoints to keep, 0 = all (default: "
                        f"{TrainConfig.keep_checkpoints})")
    g.add_argument("--sample-every", type=int, default=None,
                   help="write a sample grid every N generator steps, 0 = never (default: "
                        f"{TrainConfig.sample_every})")
    g.add_argument("--n-samples", type=int, default=None,
                   help=f"images (columns) in the sample grids (default: {TrainConfig.n_samples})")
    g.add_argument("--sample-edits", type=int, default=None,
                   help="attributes flipped in the sample grids, one row each (default: "
                        f"{TrainConfig.sample_edits})")
    g.add_argument("--log-every", type=int, default=None,
                   help="append averaged losses to metrics.jsonl every N steps (default: "
                        f"{TrainConfig.log_every})")
    g.add_argument("--no-progress", action="store_true",
                   help="turn progress off (shown by default: a bar on a terminal, else a "
                        "line per --log-every)")
    g.add_argument("--time-limit", type=positive_float, default=None,
                   help="stop with a final checkpoint within this many seconds of training "
                        "(warm-up included; judged by the longest step and checkpoint so "
                        "far); resume with --resume auto (default: none)")

    g = p.add_argument_group("hardware")
    add_device(g, TrainConfig.device, note=" (under torchrun give cuda: each process takes "
                                          "GPU LOCAL_RANK)")
    g.add_argument("--amp", choices=AMP_MODES, default=TrainConfig.amp,
                   help="autocast dtype: bf16, fp16 (CUDA only, with gradient scaling) or none; "
                        "the gradient penalty is always computed in float32 (default: "
                        "%(default)s)")
    g.add_argument("--dtype", choices=TRAIN_DTYPES, default=TrainConfig.dtype,
                   help="training precision: float32, or float64 for numerical reference runs "
                        "(slow; e.g. checking DDP against one process) (default: %(default)s)")
    g.add_argument("--dist-backend", choices=("nccl", "gloo"), default=None,
                   help="torch.distributed backend under torchrun (default: nccl on cuda, gloo on cpu)")
    threads.add_option(g)
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) (bit-reproducible runs and "
                        "resumes; slower on GPU)")


def _base_config(args: argparse.Namespace):
    """The configuration from --config / --resolution / width options (default attributes)."""
    from ..files import read_small_text
    from .checkpoint import read_config

    if args.config:
        text = args.config
        if not text.lstrip().startswith("{") and Path(text).is_dir():
            cfg = read_config(text)
        else:
            if not text.lstrip().startswith("{"):
                if not Path(text).is_file():
                    raise ValueError(f"--config {text!r} is neither a JSON file, a checkpoint "
                                     f"folder nor a JSON string")
                try:
                    cfg = BridgeGANConfig.from_json(read_small_text(text))
                except ValueError as exc:
                    raise ValueError(f"--config {text}: {exc}") from None
            else:
                cfg = BridgeGANConfig.from_json(text)
    else:
        cfg = BridgeGANConfig()  # --resolution, when given, replaces the size below
    changes = {k: getattr(args, k) for k in _ARCH_OPTIONS if getattr(args, k) is not None}
    if args.resolution is not None:
        changes["image_size"] = args.resolution
    return cfg.replace(**changes)


def _arch_given(args: argparse.Namespace) -> bool:
    return bool(args.config or args.resolution is not None
                or any(getattr(args, k) is not None for k in _ARCH_OPTIONS))


def _train_config(args: argparse.Namespace, base: dict | None):
    data = dict(base) if base else TrainConfig().to_dict()
    for name in _TRAIN_OPTIONS:
        v = getattr(args, name)
        if v is not None:
            data[name] = v
    weights = dict(data.get("weights") or LossWeights().to_dict())
    for f in fields(LossWeights):
        v = getattr(args, _WEIGHT_OPTIONS[f.name][0])
        if v is not None:
            weights[f.name] = v
    data["weights"] = weights
    return TrainConfig.from_dict(data)


def _way_out(ckpt_cfg, model_cfg, resuming: bool) -> str:
    """What to do where the model options differ from a checkpoint's (``resuming`` it, or
    starting from its weights with --init-from)."""
    if resuming:
        return ("; a run resumes as it is: leave out the model options and --attributes, or "
                "start a new run (another --out) from its weights with --init-from, with "
                "--widen for wider layers")
    if ckpt_cfg.attributes != model_cfg.attributes:
        return ("; --init-from takes a model of the same attributes: leave out --attributes "
                "(and give data that has the checkpoint's)")
    return "; leave out the model options to take the checkpoint's, or add --widen for wider layers"


def _make_datasets(args, size: int, attributes):
    """The training set and the set the sample grids come from: the validation split, or
    None where the data has none (an error in its rows, a missing image, is the data's)."""
    from .data import dataset_options, make_dataset
    from .data.image import EmptySplitError

    kw = dataset_options(args.data, split_mode=args.split_mode)
    train = make_dataset(args.data, size, attributes, split="train", **kw)
    try:
        samples = make_dataset(args.data, size, attributes, split="val", **kw)
    except EmptySplitError:
        return train, None
    return train, samples if len(samples) else None


def _refuse_earlier_run(out: Path, resume: Path | None = None) -> None:
    """Refuse a fresh run, or a run resumed from a checkpoint of another folder
    (``resume``), in a run folder holding an earlier run's checkpoints or metrics: its
    checkpoints would be pruned against the new ones, and its metrics mixed in."""
    from .run_folder import CHECKPOINTS, METRICS_FILE, earlier_run

    found = earlier_run(out)
    if not found:
        return
    if resume is not None:
        raise ValueError(f"--out {out} holds an earlier run ({', '.join(map(str, found))}) "
                         f"and --resume {resume} is not one of its checkpoints (those are "
                         f"in {out / CHECKPOINTS}): continuing it there would drop that "
                         f"run's later checkpoints and mix the two runs' metrics; choose "
                         f"another --out for the continuation")
    if found[0].name == METRICS_FILE:  # no checkpoint: nothing --resume could continue
        raise ValueError(f"--out {out} holds {found[0]} of an earlier run that saved no "
                         f"checkpoint: move or remove it, or choose another --out")
    raise ValueError(f"--out {out} holds an earlier run ({', '.join(map(str, found))}): "
                     f"pass --resume auto (or a checkpoint folder) to continue it, or "
                     f"choose another --out for a new run")


def run(args: argparse.Namespace) -> int:
    """Train; returns a process exit status. A process of a torchrun launch with two or more
    processes ends here instead, with that status (``distributed.end_process`` says why)."""
    import torch

    from ..devices import device_problem
    from . import distributed

    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    problem = device_problem(args.device, distributed.launched_several())
    if problem:
        print(f"bridgegan train: error: --device {args.device}: {problem}", file=sys.stderr)
        return 2
    info = distributed.init_from_env(args.device, args.dist_backend)
    try:
        status = _train(args, info)
    except Exception:
        if not info.enabled:
            raise
        traceback.print_exc()  # what Python prints for an error nothing caught, and its status
        status = 1
    finally:
        distributed.shutdown()
    if info.enabled:
        distributed.end_process(status)
    return status


def _start(args: argparse.Namespace, out: Path) -> tuple[Path | None, Path | None]:
    """The training checkpoint a run resumes (``--resume``) and the weights it starts from
    (``--init-from``), checked before any work; None where there is none."""
    from .checkpoint import CONFIG_FILE, CheckpointError
    from .run_folder import CHECKPOINTS, latest_checkpoint
    from .train_state import STATE_JSON

    if not args.resume:
        _refuse_earlier_run(out)
    elif args.resume != "auto" and not Path(args.resume).resolve().is_relative_to(
            (out / CHECKPOINTS).resolve()):
        _refuse_earlier_run(out, Path(args.resume))
    resume = None
    if args.resume == "auto":
        resume = latest_checkpoint(out)
    elif args.resume:
        resume = Path(args.resume)
        if not resume.is_dir():
            raise CheckpointError(f"--resume {resume}: no such folder")
        if not (resume / STATE_JSON).is_file():
            hint = (f": an inference checkpoint; --init-from {resume} starts a run from "
                    f"its weights" if (resume / CONFIG_FILE).is_file() else "")
            raise CheckpointError(f"--resume {resume}: no training checkpoint there "
                                  f"(expected {STATE_JSON}){hint}")
    if args.init_from and args.resume and args.resume != "auto":
        raise ValueError("give --resume (continue a run) or --init-from (start from "
                         "weights), not both")
    return resume, Path(args.init_from) if args.init_from and resume is None else None


def _announce(args: argparse.Namespace, info: DistInfo, out: Path, trainer, config,
              n_images: int, resume: Path | None, init: Path | None, dropped: list) -> None:
    """Rank 0's opening lines (what runs where, from what) and the run's RUN_FILE."""
    from .info import parameter_counts
    from .run_folder import CHECKPOINTS

    if args.resume == "auto" and resume is None:
        print(f"--resume auto: no checkpoint in {out / CHECKPOINTS}; a new run starts",
              file=sys.stderr)
    model_cfg = trainer.model.config
    n = parameter_counts(trainer.model)
    where = f"{info.world_size} processes" if info.enabled else "1 process"
    print(f"bridgegan train: {n_images} images ({args.data}), {model_cfg.image_size}px, "
          f"{model_cfg.n_attrs} attributes, {where} on {trainer.device}, amp {config.amp}; "
          f"params G {n['generator']:,} E {n['encoder']:,} M {n['mapping']:,} "
          f"D {n['discriminator']:,}", file=sys.stderr)
    if resume is not None:
        print(f"resumed from {resume} at step {trainer.step}", file=sys.stderr)
    elif init is not None:
        print(f"started from the weights of {init}", file=sys.stderr)
    if dropped:
        print(f"removed the later checkpoints of the course the run leaves: "
              f"{', '.join(p.name for p in dropped)}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    write_file_atomic(out / RUN_FILE, (json.dumps(
        {"argv": sys.argv, "model_config": model_cfg.to_dict(),
         "train_config": config.to_dict(), "world_size": info.world_size},
        indent=1) + "\n").encode())


def _report_end(trainer, steps: int, out: Path, resumed: bool) -> None:
    """Rank 0's closing line: why the run ended and its last checkpoint (the folder that
    eval, export and translate's --checkpoint take)."""
    from .run_folder import latest_checkpoint

    last = latest_checkpoint(out)
    if trainer.step < steps:  # the time limit ended it
        print(f"stopped by --time-limit at step {trainer.step} of {steps} with a checkpoint "
              f"in {last}; continue with --resume auto", file=sys.stderr)
    elif resumed and trainer.step > steps:
        print(f"nothing to train: the checkpoint is at step {trainer.step}, past --steps "
              f"{steps}: {last}", file=sys.stderr)
    else:
        print(f"done: step {trainer.step}, checkpoint {last}", file=sys.stderr)


def _configs(args: argparse.Namespace, resume: Path | None, init: Path | None):
    """The run's model and training configurations and its datasets: the options over the
    checkpoint's (``resume``: its model and train_config; ``init``: its model), the model's
    attributes the data's; a model that differs from the checkpoint's is refused (but for
    --widen), with the way out."""
    from .checkpoint import CheckpointError, read_config
    from .classifier import CONFIG_FILE as CLASSIFIER_FILE
    from .train_state import STATE_JSON, read_train_state
    from .widen import check_widening

    base_train, ckpt_cfg = None, None
    if resume is not None:
        ckpt_cfg = read_config(resume)
        base_train = read_train_state(resume)["train_config"]
    elif init is not None:
        ckpt_cfg = read_config(init)
    if ckpt_cfg is not None and not _arch_given(args):
        model_cfg = ckpt_cfg
    else:
        model_cfg = _base_config(args)
    attrs = args.attributes or (ckpt_cfg.attributes if ckpt_cfg is not None else None)
    train_set, sample_set = _make_datasets(args, model_cfg.image_size, attrs)
    model_cfg = model_cfg.replace(attributes=tuple(train_set.attributes))
    if args.widen and init is None:
        raise ValueError("--widen needs --init-from (a checkpoint to widen), and a run to "
                         "resume is resumed as it is")
    if args.widen:
        check_widening(ckpt_cfg, model_cfg)
    elif ckpt_cfg is not None:
        diffs = ckpt_cfg.differences(model_cfg)
        if diffs:
            raise CheckpointError(f"the model options differ from the checkpoint's "
                                  f"configuration: {'; '.join(diffs)}"
                                  f"{_way_out(ckpt_cfg, model_cfg, resume is not None)}")
    try:
        config = _train_config(args, base_train)
    except ValueError as exc:
        if base_train is None:
            raise
        raise CheckpointError(f"{resume / STATE_JSON}: its train_config with these options: "
                              f"{exc}") from None
    if (resume is not None and config.feature_classifier and args.feature_classifier is None
            and not (Path(config.feature_classifier) / CLASSIFIER_FILE).is_file()):
        raise CheckpointError(f"the run's --feature-classifier {config.feature_classifier} "
                              f"holds no classifier (moved or removed since the run began?)"
                              f": pass --feature-classifier FOLDER to name where it is now")
    return model_cfg, config, train_set, sample_set


def _train(args: argparse.Namespace, info: DistInfo) -> int:
    """`run` within the process group ``info`` (a distributed.DistInfo)."""
    from .checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
    from .run_folder import (CHECKPOINTS, METRICS_FILE, SAMPLES, check_checkpoints,
                             drop_metrics_after)
    from .trainer import Trainer

    try:
        out = Path(args.out)
        for folder in (out, out / CHECKPOINTS, out / SAMPLES):  # before any work
            check_writable_folder(folder, "output folder")
        if all((out / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE)):
            raise ValueError(f"--out {out} is a checkpoint folder ({CONFIG_FILE}, "
                             f"{WEIGHTS_FILE}): a run writes its own folder (checkpoints, "
                             f"samples, metrics); give another --out")
        check_apart(out, "--out", [  # a run's files in the weights it reads
            ("--init-from", args.init_from),
            ("--resume", None if args.resume in (None, "auto") else args.resume)], holds=False)
        prepare_file_targets(out, [RUN_FILE, METRICS_FILE])
        check_checkpoints(out)
        resume, init = _start(args, out)
        if (out / METRICS_FILE).is_file() and not os.access(out / METRICS_FILE, os.W_OK):
            # found at the first record otherwise, the steps before it lost
            raise ValueError(f"{out / METRICS_FILE} is write-protected: the run appends its "
                             f"records there; make it writable or choose another --out")
        model_cfg, config, train_set, sample_set = _configs(args, resume, init)
        config.device = args.device
        trainer = Trainer(model_cfg, config, train_set, out_dir=out, dist=info,
                          sample_set=sample_set, progress=not args.no_progress)
        dropped = []
        if resume is not None:
            dropped = trainer.load(resume)
        else:
            if args.resume == "auto" and info.is_main:
                # no checkpoint to continue (a run killed before its first one): the run
                # starts afresh, and so does its log, or the records of the steps it
                # redoes would follow the killed run's (a line cut short glued to them)
                drop_metrics_after(out, -1)
            if init is not None:
                trainer.init_weights(init, widen=args.widen)
        if info.is_main:
            _announce(args, info, out, trainer, config, len(train_set), resume, init, dropped)
        with stop_on_signals(trainer.request_stop):
            trainer.train(time_limit=args.time_limit)
        if trainer.stop_signal is not None:
            if info.is_main:
                print(f"stopped by {signal.Signals(trainer.stop_signal).name} at step "
                      f"{trainer.step} with a checkpoint in {out / CHECKPOINTS}; continue "
                      f"with --resume auto", file=sys.stderr)
            return signal_status(trainer.stop_signal)
        if info.is_main:
            _report_end(trainer, config.steps, out, resume is not None)
        return 0
    except (ValueError, CheckpointError, OSError) as exc:
        print(f"bridgegan train: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """`python -m bridgegan.reference.train_cli` (what torchrun runs): `bridgegan train`."""
    parser = Parser(prog="bridgegan train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    with signals_deferred():  # torch's import swallows a Ctrl-C
        threads.apply(args.threads)
    with one_line_warnings("train"):
        return run(args)


if __name__ == "__main__":  # a Ctrl-C or SIGTERM before the run's own handlers are set
    # (exits.stop_on_signals): one line and an end by the signal, as the bridgegan command
    end(stopped_status("bridgegan train", main))
