"""Training loop with exact resume: per-epoch and periodic checkpoints, validation, metrics.jsonl.

Outputs in `TrainConfig.out`:
    last.pt        latest state (weights + optimizer + RNG + position in the epoch), rewritten
                   after every epoch and every `checkpoint_minutes` (atomically);
    epoch-NNN.pt   weights after epoch NNN;   best.pt  weights of the best val R@1% (K = N//100);
    metrics.jsonl  one JSON object per finished epoch;   train_config.json  the resolved config.

Resume (automatic when last.pt exists) continues the same run: the same epoch counter, optimizer
state, torch RNG state (dropout) and the stored permutation of the current epoch from the stored
position. Augmentation randomness is a function of (seed, epoch, index) (see `model.data`), so an
interrupted and resumed run ends with the same weights as an uninterrupted one (same seed and
thread count).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from model.backbone import (
    config_for_torchvision_weights,
    load_vgg16_backbone_weights,
    project_checkpoint_preprocessing,
)
from model.centering import clear_centers
from model.checkpoint import load_checkpoint, load_training_state, save_checkpoint
from model.config import ModelConfig, Preprocessing, preset_config
from model.cvm_net import CVMNet, build_model
from model.data import (
    CVUSADataset,
    DatasetError,
    PairBatch,
    PairDataset,
    collate_pairs,
    report_failures,
    set_epoch,
)
from model.evaluate import evaluate_model, open_eval_dataset, resolve_data_root
from model.geodata import open_protocol_dataset
from model.losses import weighted_soft_margin_loss
from model.sampling import (
    EpochGeometry,
    GlobalIndex,
    ServedCropDataset,
    attach_geometry,
    embed_satellites,
    epoch_geometry,
    hard_negative_order,
    semi_positive_mask,
)

log = logging.getLogger(__name__)

# Per preset: (learning rate, batch size, loss normalised by the global batch size?).
# The paper preset follows the original (Adam 1e-5, batch 12, N(N-1) with N = 12 always).
PRESET_DEFAULTS: dict[str, tuple[float, int, bool]] = {"paper": (1e-5, 12, True), "cpu": (1e-4, 24, False)}
# Settings a resumed run must share with the run that wrote last.pt.
_RUN_IDENTITY = (
    "arch", "preset", "model_config", "batch_size", "seed", "data", "loss_batch_size", "alpha",
    "offset_m", "semi_positive_m", "hard_negatives",
)  # fmt: skip


# Several training folders are concatenated.
TrainDataset = PairDataset | ConcatDataset


class TrainError(RuntimeError):
    """Training cannot start or resume (the message says why and names the file)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; saved (as a dict) in every checkpoint.

    model_config: a ModelConfig dict overriding arch/preset (custom or experimental sizes).
    loss_batch_size: N of the loss's N(N-1) normaliser; None = the actual batch size.
    checkpoint_minutes: interval of mid-epoch checkpoints (0 = after every step).
    max_minutes: stop cleanly, with a checkpoint, after this many minutes of this invocation.
    threads: torch CPU threads (None = all cores).
    offset_m: synthetic worlds' aerial crops are cut from the orthophoto around a centre displaced
    by up to this many metres east and north (`model.sampling.ServedCropDataset`); 0 = the
    pre-cut crops centred on the camera.
    semi_positive_m: pairs (i, j) whose ground j lies within this many metres of tile i's centre
    (and VIGOR's labelled semi-positives) are left out of the loss's negatives; 0 = none.
    hard_negatives: every epoch's batches are groups of look-alike tiles, mined with the current
    weights at the epoch's start (`model.sampling.hard_negative_order`).
    """

    data: tuple[str, ...]
    out: str
    arch: str = "cvm-net-i"
    preset: str = "cpu"
    epochs: int = 10
    batch_size: int = 24
    lr: float = 1e-4
    loss_batch_size: int | None = None
    alpha: float = 10.0
    workers: int = 0
    photo_fraction: float = 0.0
    # "column0" or "heading": where photo-like crops go on the canvas (`model.data.PairDataset`).
    photo_placement: str = "column0"
    augment: bool = True
    # Mirror/turn the whole scene instead of the original's satellite-only crop and rotation
    # (`rotate_flip_pair`): keeps panoramas north-aligned with their tiles.
    aligned_augment: bool = False
    max_minutes: float | None = None
    checkpoint_minutes: float = 5.0
    backbone_weights: str | None = None
    init_weights: str | None = None
    resume: bool = True
    val_data: str | None = None
    val_batch_size: int = 64
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"
    model_config: dict[str, Any] | None = None
    offset_m: float = 0.0
    semi_positive_m: float = 0.0
    hard_negatives: bool = False

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("at least one training data folder is needed")
        if not (self.offset_m >= 0.0 and self.semi_positive_m >= 0.0):
            raise ValueError(
                f"offset_m and semi_positive_m must be >= 0, got {self.offset_m} and {self.semi_positive_m}"
            )
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_train_config(
    data: list[str] | tuple[str, ...],
    out: str,
    preset: str = "cpu",
    lr: float | None = None,
    batch_size: int | None = None,
    **kwargs: Any,
) -> TrainConfig:
    """A TrainConfig with the preset's defaults for whatever is not given."""
    if preset not in PRESET_DEFAULTS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESET_DEFAULTS)}")
    default_lr, default_batch, global_norm = PRESET_DEFAULTS[preset]
    batch = batch_size or default_batch
    kwargs.setdefault("loss_batch_size", batch if global_norm else None)
    return TrainConfig(
        data=tuple(str(d) for d in data),
        out=str(out),
        preset=preset,
        lr=lr or default_lr,
        batch_size=batch,
        **kwargs,
    )


@dataclass
class RunState:
    """Mutable progress of a run, saved in last.pt. `epoch` is 1-based; `position` counts the
    samples of `permutation` already consumed in that epoch."""

    epoch: int = 1
    position: int = 0
    permutation: torch.Tensor | None = None
    step: int = 0
    best_r1pct: float | None = None
    elapsed_s: float = 0.0
    loss_sum: float = 0.0
    pairs: int = 0
    steps_in_epoch: int = 0
    skipped: int = 0
    train_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.position, self.permutation = epoch, 0, None
        self.loss_sum, self.pairs, self.steps_in_epoch, self.skipped, self.train_s = 0.0, 0, 0, 0, 0.0


@dataclass
class StepInfo:
    """Passed to the `on_step` callback after every optimiser step (and its checkpoint, if any)."""

    epoch: int
    step: int
    loss: float
    checkpointed: bool


@dataclass
class TrainResult:
    """What a `train` call achieved."""

    out: Path
    epochs_done: int
    step: int
    stopped_early: bool
    best_r1pct: float | None
    history: list[dict[str, Any]]


def resolve_model_config(cfg: TrainConfig) -> ModelConfig:
    """The ModelConfig of a new run: `cfg.model_config` if given, else the arch/preset preset,
    switched to torchvision preprocessing when torchvision VGG16 weights initialise it."""
    mcfg = (
        ModelConfig.from_dict(cfg.model_config) if cfg.model_config else preset_config(cfg.arch, cfg.preset)
    )
    if not cfg.backbone_weights:
        return mcfg
    # The project's own checkpoints (e.g. the original's `*_init` weights, `cvm import-tf`) bring
    # their input normalisation; torchvision's files expect torchvision's.
    prep = project_checkpoint_preprocessing(cfg.backbone_weights)
    if prep is None:
        return config_for_torchvision_weights(mcfg)
    return replace(
        mcfg,
        preprocessing=replace(
            mcfg.preprocessing, channel_order=prep.channel_order, mean=prep.mean, std=prep.std
        ),
    )


def build_train_dataset(cfg: TrainConfig, prep: Preprocessing) -> TrainDataset:
    """The augmented train splits of every `cfg.data` folder, concatenated."""
    parts: list[PairDataset] = []
    for k, data in enumerate(cfg.data):
        # CVACT and VIGOR folders (`open_protocol_dataset`): their train split, same options.
        other = open_protocol_dataset(
            data,
            "train",
            prep,
            augment=cfg.augment,
            photo_fraction=cfg.photo_fraction,
            seed=cfg.seed * 1000 + k,
            aligned=cfg.aligned_augment,
            photo_placement=cfg.photo_placement,
        )
        if other is not None:
            if cfg.offset_m > 0:
                raise DatasetError(
                    f"--offset-m applies to synthetic world folders (ortho.tif); {data} is a "
                    f"{type(other).__name__.removesuffix('Dataset')} folder, whose positives are as labelled"
                )
            parts.append(other)
            continue
        root, world = resolve_data_root(data)
        if cfg.offset_m > 0:
            if world is None:
                raise DatasetError(
                    f"--offset-m applies to synthetic world folders (ortho.tif); {data} is a CVUSA root"
                )
            parts.append(
                ServedCropDataset(
                    world,
                    "train",
                    prep,
                    cfg.offset_m,
                    augment=cfg.augment,
                    photo_fraction=cfg.photo_fraction,
                    seed=cfg.seed * 1000 + k,
                    aligned=cfg.aligned_augment,
                    photo_placement=cfg.photo_placement,
                )
            )
            continue
        # A distinct augmentation seed per folder, so that equal indices of two worlds differ.
        parts.append(
            CVUSADataset(
                root,
                "train",
                prep,
                cfg.augment,
                cfg.photo_fraction,
                seed=cfg.seed * 1000 + k,
                aligned=cfg.aligned_augment,
                photo_placement=cfg.photo_placement,
            )
        )
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def _build_val_dataset(cfg: TrainConfig, prep: Preprocessing) -> PairDataset | None:
    source = cfg.val_data or cfg.data[0]
    try:
        val = open_eval_dataset(source, prep, "val")
        if len(val) == 0:
            raise DatasetError(f"the val split of {source} has no pairs")
        return val
    except DatasetError as exc:
        if cfg.val_data:
            raise
        log.warning("no validation split (%s); epochs are not evaluated and best.pt is not written", exc)
        return None


def _new_run(cfg: TrainConfig) -> tuple[CVMNet, torch.optim.Optimizer, RunState]:
    torch.manual_seed(cfg.seed)
    net = build_model(resolve_model_config(cfg))
    if cfg.backbone_weights:
        for branch, backbone in (("ground", net.vgg_ground), ("satellite", net.vgg_satellite)):
            load_vgg16_backbone_weights(backbone, cfg.backbone_weights, branch)
    if cfg.init_weights:
        _load_init_weights(net, cfg.init_weights)
    net.to(cfg.device)
    return net, _optimizer(net, cfg), RunState()


def _load_init_weights(net: CVMNet, path: str) -> None:
    """Start from the weights of an earlier run (e.g. continuing on more data); the
    architecture must be the same, the optimiser starts afresh. Inference-only settings of the
    preprocessing (`INFERENCE_ONLY`, e.g. the shipped weights' test-time views) are this run's;
    descriptor means measured for those weights are dropped, as training changes them."""
    loaded = load_checkpoint(path)
    if trained_part(loaded.config) != trained_part(net.config):
        raise TrainError(f"{path}: its model config differs from this run's; cannot start from it")
    net.load_state_dict(loaded.model.state_dict())
    clear_centers(net)


# Preprocessing fields that only change how trained weights are used, not what they learn.
INFERENCE_ONLY = ("views", "photo_headings", "pano_elevation_deg", "centered")


def trained_part(cfg: ModelConfig) -> dict[str, Any]:
    """The config without `INFERENCE_ONLY` fields: equal for weights that can stand in for each other."""
    d = cfg.to_dict()
    d["preprocessing"] = {k: v for k, v in d["preprocessing"].items() if k not in INFERENCE_ONLY}
    return d


def _optimizer(net: CVMNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in net.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def _resume(cfg: TrainConfig, path: Path) -> tuple[CVMNet, torch.optim.Optimizer, RunState]:
    loaded = load_checkpoint(path, device=cfg.device, inference=False)
    saved = loaded.meta.get("train_config") or {}
    changed = [k for k in _RUN_IDENTITY if k in saved and _norm(saved[k]) != _norm(getattr(cfg, k))]
    if changed:
        raise TrainError(
            f"{path} belongs to a run with different {', '.join(changed)}; "
            "use the same settings, another --out, or --no-resume"
        )
    raw = load_training_state(path)
    if raw is None:
        raise TrainError(f"{path} holds no training state to resume from; use --no-resume or another --out")
    net = loaded.model
    optimizer = _optimizer(net, cfg)
    optimizer.load_state_dict(raw["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr  # the learning rate may be changed on resume
    state = RunState(**{k: v for k, v in raw.items() if k in RunState.__dataclass_fields__})
    torch.set_rng_state(raw["torch_rng"])
    if "cuda_rng" in raw and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(raw["cuda_rng"])
    log.info("resuming %s at epoch %d, sample %d (step %d)", path, state.epoch, state.position, state.step)
    return net, optimizer, state


def _norm(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint round-trip may turn one into the other)."""
    return list(value) if isinstance(value, tuple | list) else value


def _save_last(out: Path, net: CVMNet, opt: torch.optim.Optimizer, state: RunState, cfg: TrainConfig) -> None:
    payload = asdict(state)
    payload["permutation"] = state.permutation
    payload["optimizer"] = opt.state_dict()
    payload["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available() and str(cfg.device).startswith("cuda"):
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    metrics = state.history[-1] if state.history else None
    save_checkpoint(out / "last.pt", net, train_config=cfg.to_dict(), metrics=metrics, state=payload)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl is rewritten from the checkpointed history, so it always has exactly one
    line per finished epoch, also after a crash between the two writes."""
    _write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def _epoch_loader(dataset: TrainDataset, state: RunState, cfg: TrainConfig) -> DataLoader:
    assert state.permutation is not None
    set_epoch(dataset, state.epoch)
    return DataLoader(
        GlobalIndex(dataset),  # batch.index numbers the pairs of all --data folders together
        batch_size=cfg.batch_size,
        sampler=state.permutation[state.position :].tolist(),
        drop_last=True,
        num_workers=cfg.workers,
        collate_fn=collate_pairs,
        generator=torch.Generator(),  # never draw from the global RNG that dropout uses
    )


def _train_step(net: CVMNet, opt: torch.optim.Optimizer, batch: PairBatch, cfg: TrainConfig) -> float:
    """One optimiser step on a batch of >= 2 pairs; returns the loss."""
    g, s = net(batch.grd.to(cfg.device), batch.sat.to(cfg.device))
    exclude = None
    if cfg.semi_positive_m > 0 and batch.position is not None and batch.group is not None:
        exclude = semi_positive_mask(batch.position, batch.group, cfg.semi_positive_m, batch.tiles)
    loss = weighted_soft_margin_loss(g, s, alpha=cfg.alpha, batch_size=cfg.loss_batch_size, exclude=exclude)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


@dataclass
class _Context:
    """What the epoch functions share during one `train` invocation (times: time.monotonic)."""

    cfg: TrainConfig
    out: Path
    on_step: Callable[[StepInfo], None] | None
    elapsed_base: float
    start: float = field(default_factory=time.monotonic)
    last_checkpoint: float = field(default_factory=time.monotonic)

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_checkpoint >= self.cfg.checkpoint_minutes * 60.0

    def out_of_time(self) -> bool:
        limit = self.cfg.max_minutes
        return limit is not None and time.monotonic() - self.start >= limit * 60.0

    def elapsed(self) -> float:
        """Training wall time of the whole run (all invocations), seconds."""
        return self.elapsed_base + time.monotonic() - self.start

    def save(self, net: CVMNet, opt: torch.optim.Optimizer, state: RunState) -> None:
        state.elapsed_s = self.elapsed()
        _save_last(self.out, net, opt, state, self.cfg)
        self.last_checkpoint = time.monotonic()


def _epoch_permutation(n: int, state: RunState, cfg: TrainConfig) -> torch.Tensor:
    """The stored order of the current epoch, or a new one seeded by (seed, epoch)."""
    if state.permutation is None:
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + state.epoch)
        state.permutation = torch.randperm(n, generator=gen)
    if len(state.permutation) != n:
        raise TrainError(
            f"the training data has {n} pairs but the checkpoint's epoch has {len(state.permutation)}"
        )
    return state.permutation


def _mine_order(
    net: CVMNet, dataset: TrainDataset, geometry: EpochGeometry | None, state: RunState, cfg: TrainConfig
) -> torch.Tensor:
    """The epoch's order of look-alike batches (`--hard-negatives`), from the weights at its start.
    Mining again after a resume at the epoch's start gives the same order (same weights); later
    in the epoch the stored order is used."""
    assert geometry is not None
    tick = time.monotonic()
    desc, index = embed_satellites(net, dataset, cfg.val_batch_size, cfg.workers, cfg.device)
    order = hard_negative_order(
        desc, index, len(dataset), geometry, cfg.semi_positive_m, cfg.batch_size, cfg.seed, state.epoch
    )
    log.info("epoch %d: look-alike batches mined in %.1f s", state.epoch, time.monotonic() - tick)
    return order


def _record_step(state: RunState, loss: float | None, pairs: int, seconds: float, batch_size: int) -> None:
    state.train_s += seconds
    state.position += batch_size
    state.step += 1
    if loss is not None:
        state.loss_sum += loss
        state.pairs += pairs
        state.steps_in_epoch += 1


def _run_epoch(
    net: CVMNet, opt: torch.optim.Optimizer, dataset: TrainDataset, state: RunState, ctx: _Context
) -> bool:
    """Train on the rest of the current epoch; False when stopped early by --max-minutes."""
    cfg = ctx.cfg
    geometry = None
    if cfg.semi_positive_m > 0 or cfg.hard_negatives:
        set_epoch(dataset, state.epoch)
        geometry = epoch_geometry(dataset)
    if cfg.hard_negatives and state.permutation is None:
        state.permutation = _mine_order(net, dataset, geometry, state, cfg)
    _epoch_permutation(len(dataset), state, cfg)
    net.train()
    bar = tqdm(total=len(dataset) // cfg.batch_size, initial=state.position // cfg.batch_size,
               desc=f"epoch {state.epoch}/{cfg.epochs}", disable=None, leave=False)  # fmt: skip
    with bar:
        tick = time.monotonic()
        for batch in _epoch_loader(dataset, state, cfg):
            state.skipped += report_failures(batch.failures)
            if geometry is not None:
                attach_geometry(batch, geometry)
            loss = _train_step(net, opt, batch, cfg) if len(batch) >= 2 else None
            _record_step(state, loss, len(batch), time.monotonic() - tick, cfg.batch_size)
            bar.update(1)
            bar.set_postfix(
                loss=f"{state.loss_sum / max(1, state.steps_in_epoch):.4f}", pairs_s=f"{_rate(state):.1f}"
            )
            stop = ctx.out_of_time()
            saved = stop or ctx.checkpoint_due()
            if saved:
                ctx.save(net, opt, state)
            if ctx.on_step is not None:
                ctx.on_step(StepInfo(state.epoch, state.step, float("nan") if loss is None else loss, saved))
            if stop:
                return False
            tick = time.monotonic()
    return True


def _finish_epoch(
    net: CVMNet, opt: torch.optim.Optimizer, state: RunState, val: PairDataset | None, ctx: _Context
) -> None:
    """Validate, record the epoch, write epoch-NNN.pt / best.pt / last.pt / metrics.jsonl."""
    cfg = ctx.cfg
    metrics = None
    if val is not None:
        m, _ = evaluate_model(net, val, cfg.val_batch_size, cfg.workers, cfg.device)
        metrics = m.to_dict()
    record = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": state.loss_sum / state.steps_in_epoch if state.steps_in_epoch else None,
        "pairs_per_s": round(_rate(state), 2),
        "elapsed_s": round(ctx.elapsed(), 3),
        "skipped": state.skipped,
        "lr": cfg.lr,
        "val": metrics,
    }
    log.info("epoch %d: %s", state.epoch, json.dumps(record))
    state.history.append(record)
    save_checkpoint(ctx.out / f"epoch-{state.epoch:03d}.pt", net, train_config=cfg.to_dict(), metrics=record)
    if metrics is not None and (state.best_r1pct is None or metrics["r1pct"] > state.best_r1pct):
        state.best_r1pct = metrics["r1pct"]
        save_checkpoint(ctx.out / "best.pt", net, train_config=cfg.to_dict(), metrics=record)
    state.start_epoch(state.epoch + 1)
    ctx.save(net, opt, state)
    _write_metrics(ctx.out, state.history)


def train(cfg: TrainConfig, on_step: Callable[[StepInfo], None] | None = None) -> TrainResult:
    """Run (or resume) the training described by `cfg`; see the module docstring for outputs.

    on_step: optional callback after every step (progress reporting, tests).
    """
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    out = Path(cfg.out)
    resuming = cfg.resume and (out / "last.pt").exists()
    net, opt, state = _resume(cfg, out / "last.pt") if resuming else _new_run(cfg)
    prep = net.config.preprocessing
    dataset, val = build_train_dataset(cfg, prep), _build_val_dataset(cfg, prep)
    if len(dataset) < cfg.batch_size:
        raise TrainError(f"{len(dataset)} readable training pairs in {', '.join(cfg.data)}: fewer than one "
                         f"batch of {cfg.batch_size}")  # fmt: skip
    # Created only once the data is known to be usable: a refused run leaves no empty folder.
    out.mkdir(parents=True, exist_ok=True)
    if not resuming:
        log.info("new run in %s: %s", out, json.dumps(cfg.to_dict()))
    _write_text_atomic(out / "train_config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
    _write_metrics(out, state.history)
    ctx = _Context(cfg, out, on_step, state.elapsed_s)
    while state.epoch <= cfg.epochs:
        if not _run_epoch(net, opt, dataset, state, ctx):
            return TrainResult(out, len(state.history), state.step, True, state.best_r1pct, state.history)
        _finish_epoch(net, opt, state, val, ctx)
    return TrainResult(out, len(state.history), state.step, False, state.best_r1pct, state.history)


def _rate(state: RunState) -> float:
    """Training throughput of the current epoch in pairs per second (0 before the first step)."""
    return state.pairs / state.train_s if state.train_s > 0 else 0.0
