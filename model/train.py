"""Multi-task fine-tuning: one loop for CPU, CUDA, LoRA and DDP (torchrun).

Why one loop: the shipped model, the LoRA variant, the feedback fine-tune and the 2-process DDP test
all run these same lines, so a fix in one place fixes every path.

DDP design: every rank builds the same *global* batches (a pure function of seed and epoch) and
takes its slice of each. Because the global batch is known everywhere, each rank can normalise its
loss by the *global* number of labelled examples per head; multiplied by the world size this undoes
DDP's gradient averaging, so N processes compute exactly the gradient one process would.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import re
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from finsent.errors import ConfigError
from finsent.model import artifact, checkpoint, corpus
from finsent.model.batching import bucketed_batches, pad, sorted_batches
from finsent.model.data import IGNORE, Example, check_data_dir, load_twitter, normalised
from finsent.model.domain import check_prefixes, tag
from finsent.model.licence import commercial
from finsent.model.network import MultiTaskModel
from finsent.model.quality import fit_temperature, present_class_scores, scores
from finsent.model.text import prepare

log = logging.getLogger("finsent.model.train")


@dataclass
class TrainConfig:
    """One training run. Written next to the model so every version says how it was made."""

    name: str = "finsent-minilm"
    version: str = ""  # empty: a UTC timestamp
    base: str = "all-MiniLM-L6-v2"
    init_from: str = ""  # a finsent model directory to continue from (feedback fine-tuning)
    data_dir: str = "../shared/data"
    out_dir: str = "models"
    run_dir: str = "runs"  # checkpoints, per-run logs
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float = 1e-3
    # <1: layer-wise learning-rate decay. The top encoder layer trains at ``lr``, each layer below at this factor
    # times the one above, the embeddings below the bottom layer: the lower layers hold the general language the
    # small task sets cannot teach back once a full-rate step has moved them
    layer_lr_decay: float = 1.0
    weight_decay: float = 0.01
    adam_eps: float = 1e-6  # BERT's value; 1e-8 turns ~zero gradients of rare embedding rows into full steps
    warmup_ratio: float = 0.06
    grad_clip: float = 1.0
    dropout: float = 0.1
    topic_weight: float = 1.0  # per-head loss weights (the sentiment set is half the size of the topic set)
    sentiment_weight: float = 1.0
    max_length: int = 96
    seed: int = 13
    patience: int = 2
    dev_fraction: float = 0.1
    # >0: this fraction of every labelled extra set's training part (corpus.news_dev) is not trained on but scored
    # beside the Twitter dev slice, and an epoch (and a run, by its dev) is chosen on the mean of the two. Why: the
    # Twitter dev slice alone cannot see news, and the held-out rows must never choose a model
    news_dev_fraction: float = 0.0
    limit_train: int = 0  # >0: use only the first N training examples (tests, smoke runs)
    limit_dev: int = 0
    checkpoint_every: int = 200  # steps; a stopped run resumes from the last one
    max_steps: int = 0  # >0: checkpoint and stop after this many steps in total (time-boxed runs); rerun to resume
    eval_batch_size: int = 128
    device: str = "auto"
    amp: str = "auto"  # auto: bf16 on CUDA when supported, fp16 otherwise; none on CPU
    threads: int = 0  # torch CPU threads; 0 = torch default
    train_sets: list[str] = field(default_factory=list)  # extra supervised sets (finsent.model.corpus.TRAIN_SETS)
    train_set_repeat: int = 1  # each extra set is seen this many times per epoch (they are small)
    train_set_augment: int = 0  # plus this many label-preserving rewrites of each extra example (model.augment)
    pseudo_from: str = ""  # a teacher model dir: fill each Twitter text's missing head where it is confident
    pseudo_threshold: float = 0.9
    pseudo_polar_threshold: float = 0.0  # >0: the threshold for negative/positive sentiment pseudo-labels
    self_train_from: str = ""  # a teacher model dir that labels the unlabelled training sets (corpus.self_train)
    self_train_threshold: float = 0.9
    # >0: stochastic weight averaging. From this fraction of the run's steps on, a uniform mean of the weights is
    # sampled every ``average_every`` steps; the run writes it instead of the best epoch when dev prefers it
    average_from: float = 0.0
    average_every: int = 50
    rdrop_alpha: float = 0.0  # >0: R-Drop, each batch run twice (two dropout masks), + alpha x their symmetric KL
    # {"twitter": ..., "news": ...}: each text read behind its domain's word (model.domain); {}: none, or the
    # init_from model's (a model continued from a tagged one keeps its tags)
    domain_prefixes: dict[str, str] = field(default_factory=dict)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    mlflow: bool = True
    mlflow_uri: str = ""  # empty: sqlite file in the project directory
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> TrainConfig:
        """The run a TOML file describes; anything that cannot work is one ``ConfigError`` naming the file, before
        a model or a data set is loaded."""
        try:
            raw = tomllib.loads(path.read_text()) if path else {}
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: {err}") from err
        raw = raw.get("train", raw)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{path}: unknown training settings {sorted(unknown)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            cfg = cls(**raw)
            cfg.validate()
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{path}: {err}") from err
        return cfg

    def validate(self) -> None:
        """Raise ``ValueError`` for settings no run can use (``from_toml`` names the file; ``train`` re-raises them as
        ``ConfigError``): found here, not an hour into a run or as a traceback from deep in the loop."""
        corpus.licence_of(self.train_sets)
        unlabelled = [n for n in self.train_sets if corpus.TRAIN_SETS[n].unlabelled]
        if unlabelled and not self.self_train_from:
            raise ValueError(f"training sets {unlabelled} have no labels: set self_train_from to a teacher model")
        check_prefixes(self.domain_prefixes)
        if self.average_from and not 0 < self.average_from < 1:
            raise ValueError(f"average_from is a fraction of the run's steps, in (0, 1): got {self.average_from}")
        if self.average_from and (self.lora or self.average_every < 1):
            raise ValueError("weight averaging needs full fine-tuning (lora = false) and average_every >= 1")
        if not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"layer_lr_decay is a factor in (0, 1]: got {self.layer_lr_decay}")
        if not 0 <= self.news_dev_fraction < 1:
            raise ValueError(
                f"news_dev_fraction is a fraction of each extra set, in [0, 1): got {self.news_dev_fraction}"
            )
        if self.news_dev_fraction and not [n for n in self.train_sets if not corpus.TRAIN_SETS[n].unlabelled]:
            raise ValueError("news_dev_fraction needs a labelled set in train_sets to cut the news dev slice from")
        if self.max_steps and not self.version:
            raise ValueError("max_steps needs a version (--version): the rerun that resumes must name the same one")

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote its checkpoint: not where, how fast or for how many
        steps per sitting it runs. A checkpoint resumed under another schedule, data mix or rate would finish a run
        that no config describes, and its model's ``train_config.json`` would say otherwise."""
        loose = {
            "version",
            "max_steps",
            "threads",
            "device",
            "out_dir",
            "run_dir",
            "checkpoint_every",
            "eval_batch_size",
            "mlflow",
            "mlflow_uri",
        }
        return {k: v for k, v in asdict(self).items() if k not in loose}


# ----------------------------------------------------------------------------- distributed helpers


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# ----------------------------------------------------------------------------- data


@dataclass
class Encoded:
    ids: list[list[int]]
    topic: np.ndarray
    sentiment: np.ndarray

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


def encode(examples: list[Example], tokenizer, max_length: int, prefixes: dict[str, str] | None = None) -> Encoded:
    """Token ids and labels; with ``prefixes`` each text behind its domain's tag (``model.domain.tag``)."""
    texts = [tag(prefixes or {}, ex.domain, prepare(ex.text)) for ex in examples]
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(
        ids=ids,
        topic=np.array([ex.topic for ex in examples], dtype=np.int64),
        sentiment=np.array([ex.sentiment for ex in examples], dtype=np.int64),
    )


@torch.no_grad()
def predict_logits(
    model: nn.Module, data: Encoded, pad_id: int, device: torch.device, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    n = len(data.ids)
    topic = np.zeros((n, 0), dtype=np.float32)
    sent = np.zeros((n, 0), dtype=np.float32)
    for batch in sorted_batches(data.lengths, batch_size):
        ids, mask = pad([data.ids[i] for i in batch], pad_id)
        t, s = model(ids.to(device), mask.to(device))
        if topic.shape[1] == 0:
            topic = np.zeros((n, t.shape[1]), dtype=np.float32)
            sent = np.zeros((n, s.shape[1]), dtype=np.float32)
        topic[batch] = t.float().cpu().numpy()
        sent[batch] = s.float().cpu().numpy()
    return topic, sent


def evaluate(model, data: Encoded, pad_id: int, device, batch_size: int) -> dict[str, Any]:
    """Scores per head on the examples that carry that head's label, plus the raw logits."""
    topic_logits, sent_logits = predict_logits(model, data, pad_id, device, batch_size)
    out: dict[str, Any] = {}
    for head, logits, labels in (
        ("topic", topic_logits, data.topic),
        ("sentiment", sent_logits, data.sentiment),
    ):
        sel = labels != IGNORE
        if sel.any():
            for key, value in scores(labels[sel], logits[sel].argmax(1)).items():
                out[f"{head}_{key}"] = value
            out[f"_{head}_logits"] = logits[sel]
            out[f"_{head}_labels"] = labels[sel]
    out["selection"] = float(np.mean([out.get("topic_macro_f1", 0.0), out.get("sentiment_macro_f1", 0.0)]))
    return out


def news_scores(scored: dict[str, Any]) -> dict[str, float]:
    """The ``news_*`` scores of an ``evaluate`` result on news rows: per head, over the classes the rows hold
    (``present_class_scores``), and ``news_selection``, the mean macro-F1 of the heads the rows label (a head none of
    them labels is not counted as zero)."""
    out: dict[str, float] = {}
    heads = []
    for head in ("topic", "sentiment"):
        if f"_{head}_labels" in scored:
            labels, logits = scored[f"_{head}_labels"], scored[f"_{head}_logits"]
            for key, value in present_class_scores(labels, logits.argmax(1)).items():
                out[f"news_{head}_{key}"] = value
            heads.append(out[f"news_{head}_macro_f1"])
    out["news_selection"] = float(np.mean(heads))
    return out


def pooled(scored: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``_``-keys (labels and logits per head) of several ``evaluate`` results on disjoint rows, as one result on
    all their rows would hold them (what ``news_scores`` reads), so that rows scored once per set can be scored
    together too without running the model again."""
    out: dict[str, Any] = {}
    for head in ("topic", "sentiment"):
        parts = [r for r in scored if f"_{head}_labels" in r]
        if parts:
            out[f"_{head}_labels"] = np.concatenate([r[f"_{head}_labels"] for r in parts])
            out[f"_{head}_logits"] = np.concatenate([r[f"_{head}_logits"] for r in parts])
    return out


def with_news(result: dict[str, Any], news: dict[str, Any] | None) -> dict[str, Any]:
    """A Twitter dev slice's ``evaluate`` result with a news dev slice's (``news_dev_fraction``) beside it: its scores
    (``news_scores``), and ``selection`` becomes the mean of the two slices'. The ``_``-keys stay the Twitter slice's:
    the temperatures are fitted there, as before."""
    if news is None:
        return result
    result.update(news_scores(news))
    result["twitter_selection"] = result["selection"]
    result["selection"] = (result["twitter_selection"] + result["news_selection"]) / 2
    return result


def evaluate_dev(model, dev: Encoded, news: Encoded | None, pad_id: int, device, batch_size: int) -> dict[str, Any]:
    """``evaluate`` on the Twitter dev slice and, when there is one, on the news dev slice (``with_news``)."""
    scored_news = evaluate(model, news, pad_id, device, batch_size) if news is not None else None
    return with_news(evaluate(model, dev, pad_id, device, batch_size), scored_news)


# ----------------------------------------------------------------------------- the loop


class LoopState(TypedDict):
    """Where the loop stands: saved in every checkpoint (``checkpoint.save``) and resumed from. A plain dict on
    disk, so checkpoints written before this type was declared resume as they did."""

    epoch: int
    step_in_epoch: int
    global_step: int
    best: float  # dev selection score of the best epoch so far; -1 before the first
    bad_epochs: int  # epochs since the best one (early stopping)
    history: list[dict[str, Any]]  # per epoch its dev scores; last, the weight average's
    average: NotRequired[dict[str, torch.Tensor]]  # weight averaging (average_from): the mean so far
    averaged: NotRequired[int]  # the samples in ``average``
    fingerprint: NotRequired[dict[str, Any]]  # TrainConfig.fingerprint of the run (absent before it was recorded)
    mlflow_run: NotRequired[str]  # the MLflow run id, resumed with the run


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_LAYER = re.compile(r"\.layer\.(\d+)\.")


def _encoder_depth(name: str) -> int | None:
    """0 for the embeddings, i + 1 for encoder layer i, None for what sits above them (heads, a pooler)."""
    if "embeddings" in name:
        return 0
    m = _LAYER.search(name)
    return int(m.group(1)) + 1 if m else None


def _param_groups(model: MultiTaskModel, cfg: TrainConfig) -> list[dict]:
    no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias")
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    depths = [_encoder_depth(name) for name, _ in named]  # None for the heads
    top = max((d for d in depths if d is not None), default=0)
    groups: dict[tuple[bool, bool, int], list] = {}
    for (name, p), depth in zip(named, depths, strict=True):
        head = not name.startswith("encoder")
        decay = not any(nd in name for nd in no_decay)
        # Without decay the encoder stays in one group per weight-decay flag, as before the setting existed: a
        # checkpoint's optimizer state has one entry per group, so a run checkpointed before it still resumes.
        below = 0 if depth is None or cfg.layer_lr_decay == 1.0 else top - depth
        groups.setdefault((head, decay, below), []).append(p)
    return [
        {
            "params": params,
            "lr": cfg.head_lr if head else cfg.lr * cfg.layer_lr_decay**below,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (head, decay, below), params in groups.items()
    ]


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def _apply_lora(model: MultiTaskModel, cfg: TrainConfig) -> None:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=["query", "key", "value", "dense"],
        bias="none",
    )
    model.encoder = get_peft_model(model.encoder, lora)


def _merge_lora(model: MultiTaskModel) -> None:
    from peft import PeftModel

    if isinstance(model.encoder, PeftModel):
        model.encoder = model.encoder.merge_and_unload()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


class _Tracker:
    """MLflow when enabled and importable; otherwise nothing. Only rank 0 tracks."""

    def __init__(self, cfg: TrainConfig, enabled: bool, resume_run: str | None = None):
        """``resume_run``: the MLflow run a resumed training run continues (its id is kept in the checkpoint), so
        that one run holds every epoch's metrics; a stopped run used to start a second MLflow run, and the last
        one, the model's, lacked the earlier epochs."""
        self.run = None
        if not (enabled and cfg.mlflow):
            return
        import mlflow

        uri = cfg.mlflow_uri or f"sqlite:///{Path('mlruns.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(cfg.name)
        self.mlflow = mlflow
        if resume_run:
            try:
                self.run = mlflow.start_run(run_id=resume_run)
                return  # its parameters were logged when it started (how a sitting runs may differ: max_steps)
            except Exception as err:  # noqa: BLE001 - another tracking store, or the run deleted: start afresh
                log.warning("MLflow run not resumed; starting a new one", extra={"run": resume_run, "error": str(err)})
        self.run = mlflow.start_run(run_name=cfg.version)
        mlflow.log_params({k: v for k, v in asdict(cfg).items() if k != "extra"})

    @property
    def run_id(self) -> str | None:
        return self.run.info.run_id if self.run else None

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.run:
            self.mlflow.log_metrics({k: v for k, v in values.items() if not k.startswith("_")}, step=step)

    def artifacts(self, directory: Path) -> None:
        if self.run:
            self.mlflow.log_artifacts(str(directory))

    def end(self) -> None:
        if self.run:
            self.mlflow.end_run()


def train(
    cfg: TrainConfig,
    examples: list[Example] | None = None,
    dev: list[Example] | None = None,
    progress: bool = True,
) -> Path | None:
    """Train, early-stop on dev macro-F1, calibrate, and write a versioned model directory.

    ``examples``/``dev`` override the Twitter data (feedback fine-tuning, tests). Returns the model
    directory on rank 0, None on other ranks.
    """
    try:
        cfg.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if examples is None or dev is None:
        check_data_dir(Path(cfg.data_dir), "training data directory", "set data_dir in the run config (--run-config)")
    parent_meta = artifact.load_meta(Path(cfg.init_from)) if cfg.init_from else None
    check_servable_licence(cfg.name, run_provenance(cfg, parent_meta)[0])
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.version = cfg.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    device = pick_device(cfg.device)
    ddp = init_distributed(device)
    _seed_everything(cfg.seed)

    if cfg.init_from:
        model, tokenizer, parent_meta = artifact.load(Path(cfg.init_from), cfg.dropout)
        base_name = parent_meta.base
    else:
        model, tokenizer = artifact.from_base(cfg.base, cfg.dropout)
        base_name = cfg.base
    cfg.domain_prefixes = cfg.domain_prefixes or (parent_meta.domain_prefixes if parent_meta else {})
    check_prefixes(cfg.domain_prefixes)
    if cfg.lora:
        _apply_lora(model, cfg)
    model.to(device)
    trainable, total = count_parameters(model)

    if examples is None or dev is None:
        splits = load_twitter(Path(cfg.data_dir), cfg.dev_fraction)
        log.info("twitter train texts left out as copies of dev or test texts", extra={"texts": splits.twins_left_out})
        examples = splits.train if examples is None else examples
        dev = splits.dev if dev is None else dev
        if cfg.pseudo_from:
            examples, _ = corpus.pseudo_label(
                examples, Path(cfg.pseudo_from), cfg.pseudo_threshold, cfg.pseudo_polar_threshold or None
            )
        examples = examples + corpus.extra_examples(
            Path(cfg.data_dir),
            cfg.train_sets,
            cfg.train_set_repeat,
            cfg.train_set_augment,
            cfg.seed,
            cfg.news_dev_fraction,
        )
        teacher = Path(cfg.self_train_from) if cfg.self_train_from else None
        examples = (
            examples + corpus.self_train(Path(cfg.data_dir), cfg.train_sets, teacher, cfg.self_train_threshold)[0]
        )
        news_dev = corpus.news_dev(Path(cfg.data_dir), cfg.train_sets, cfg.news_dev_fraction)
        if news_dev and cfg.init_from:  # rows the weights it continues from read are no dev rows for this run
            from finsent.model.selection import trained_texts

            read = trained_texts(Path(cfg.init_from), Path(cfg.data_dir))
            unseen = [ex for ex in news_dev if normalised(ex.text) not in read]
            log.info("news dev rows the parent read left out", extra={"rows": len(news_dev) - len(unseen)})
            news_dev = unseen
        if news_dev:  # no copy of a news dev text is trained on, from any source (the Twitter sets, unlabelled ones)
            held = {normalised(ex.text) for ex in news_dev}
            before = len(examples)
            examples = [ex for ex in examples if normalised(ex.text) not in held]
            log.info("news dev slice", extra={"examples": len(news_dev), "twins_left_out": before - len(examples)})
    else:
        news_dev = []
    if cfg.limit_train:
        examples = examples[: cfg.limit_train]
    if cfg.limit_dev:
        dev = dev[: cfg.limit_dev]
    train_data = encode(examples, tokenizer, cfg.max_length, cfg.domain_prefixes)
    dev_data = encode(dev, tokenizer, cfg.max_length, cfg.domain_prefixes)
    news_dev_data = encode(news_dev, tokenizer, cfg.max_length, cfg.domain_prefixes) if news_dev else None
    pad_id = tokenizer.pad_token_id or 0

    global_batch = cfg.batch_size * ddp.world
    steps_per_epoch = math.ceil(len(train_data.ids) / global_batch)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), eps=cfg.adam_eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, int(cfg.warmup_ratio * total_steps))
    )
    net: nn.Module = model
    if ddp.world > 1:
        net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    amp_dtype = autocast_dtype(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    run_dir = Path(cfg.run_dir) / f"{cfg.name}-{cfg.version}"
    ckpt_path = run_dir / "checkpoint.pt"
    best_dir = run_dir / "best"
    average_dir = run_dir / "average"
    average_start = math.ceil(cfg.average_from * total_steps) if cfg.average_from else 0
    state: LoopState = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": -1.0, "bad_epochs": 0, "history": []}
    resumed = checkpoint.restore(ckpt_path, model, optimizer, scheduler, fingerprint=cfg.fingerprint())
    if resumed is not None:
        state = cast(LoopState, resumed)  # a checkpoint's state is what this loop saved
        log.info("resumed", extra={"checkpoint": str(ckpt_path), **{k: state[k] for k in ("epoch", "step_in_epoch")}})
    state["fingerprint"] = cfg.fingerprint()
    if ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    tracker = _Tracker(cfg, ddp.main, state.get("mlflow_run"))
    if tracker.run_id:
        state["mlflow_run"] = tracker.run_id
    log.info(
        "training",
        extra={
            "train_examples": len(train_data.ids),
            "dev_examples": len(dev_data.ids),
            "news_dev_examples": len(news_dev),
            "steps_per_epoch": steps_per_epoch,
            "trainable_params": trainable,
            "total_params": total,
            "device": str(device),
            "world": ddp.world,
            "lora": cfg.lora,
        },
    )

    def save_checkpoint() -> None:
        if ddp.main:
            checkpoint.save(ckpt_path, model, optimizer, scheduler, state)

    ce = nn.CrossEntropyLoss(ignore_index=IGNORE, reduction="sum")
    stop = state["bad_epochs"] >= cfg.patience  # a rerun of a run that stopped early goes straight to its model
    while state["epoch"] < cfg.epochs and not stop:
        epoch = state["epoch"]
        batches = bucketed_batches(train_data.lengths, global_batch, cfg.seed, epoch)
        net.train()
        started = time.monotonic()
        bar = tqdm(
            total=len(batches),
            initial=state["step_in_epoch"],
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (progress and ddp.main),
            dynamic_ncols=True,
        )
        running = 0.0
        for i in range(state["step_in_epoch"], len(batches)):
            global_idx = batches[i]
            n_topic = int((train_data.topic[global_idx] != IGNORE).sum())
            n_sent = int((train_data.sentiment[global_idx] != IGNORE).sum())
            mine = global_idx[ddp.rank :: ddp.world]
            ids, mask = pad([train_data.ids[j] for j in mine], pad_id)
            y_topic = torch.from_numpy(train_data.topic[mine]).to(device)
            y_sent = torch.from_numpy(train_data.sentiment[mine]).to(device)
            runs = 2 if cfg.rdrop_alpha > 0 else 1  # R-Drop: the batch twice in one forward, two dropout masks
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                t_logits, s_logits = net(ids.repeat(runs, 1).to(device), mask.repeat(runs, 1).to(device))
            t_logits, s_logits = t_logits.float(), s_logits.float()
            loss = (
                cfg.topic_weight * ce(t_logits, y_topic.repeat(runs)) / max(n_topic, 1)
                + cfg.sentiment_weight * ce(s_logits, y_sent.repeat(runs)) / max(n_sent, 1)
            ) / runs
            if runs == 2:
                loss = loss + cfg.rdrop_alpha * (
                    symmetric_kl(*t_logits.chunk(2)) * cfg.topic_weight
                    + symmetric_kl(*s_logits.chunk(2)) * cfg.sentiment_weight
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * ddp.world).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            running = 0.98 * running + 0.02 * loss.item() if running else loss.item()
            state["step_in_epoch"] = i + 1
            state["global_step"] += 1
            if (
                average_start
                and state["global_step"] >= average_start
                and state["global_step"] % cfg.average_every == 0
            ):
                state["average"], state["averaged"] = add_to_average(
                    state.get("average"), state.get("averaged", 0), model
                )
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
            if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
                save_checkpoint()
                log.info(
                    "checkpoint",
                    extra={"epoch": epoch + 1, "step": i + 1, "of": len(batches), "loss": round(running, 4)},
                )
            if cfg.max_steps and state["global_step"] >= cfg.max_steps:
                save_checkpoint()
                bar.close()
                log.info("paused", extra={"global_step": state["global_step"], "checkpoint": str(ckpt_path)})
                tracker.end()
                return None
        bar.close()
        minutes = (time.monotonic() - started) / 60
        result = evaluate_dev(model, dev_data, news_dev_data, pad_id, device, cfg.eval_batch_size)
        public = {k: v for k, v in result.items() if not k.startswith("_")}
        public.update(epoch=epoch + 1, minutes=minutes, train_loss=running)
        state["history"].append(public)
        tracker.metrics(public, step=epoch + 1)
        log.info("epoch done", extra=public)
        if result["selection"] > state["best"]:
            state["best"], state["bad_epochs"] = result["selection"], 0
            if ddp.main:
                _save_model(model, tokenizer, cfg, base_name, parent_meta, best_dir, public)
        else:
            state["bad_epochs"] += 1
            stop = state["bad_epochs"] >= cfg.patience
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        save_checkpoint()

    if ddp.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if not ddp.main:
        return None

    # Final artefact: reload the best epoch (or the weight average, when dev prefers it), calibrate on dev, write
    # <out_dir>/<name>/<version>.
    chosen = best_dir
    if state.get("average"):
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(state["average"], strict=False)
        result = evaluate_dev(averaged, dev_data, news_dev_data, pad_id, device, cfg.eval_batch_size)
        public = {k: v for k, v in result.items() if not k.startswith("_")}
        public.update(averaged=state["averaged"], from_step=average_start)
        state["history"].append({"average": public})
        tracker.metrics({f"average_{k}": v for k, v in public.items()}, step=cfg.epochs + 1)
        _save_model(averaged, tokenizer, cfg, base_name, parent_meta, average_dir, public)
        log.info("weight average", extra={**public, "best_epoch_selection": state["best"]})
        if result["selection"] > state["best"]:
            chosen, state["best"] = average_dir, result["selection"]
    best_model, _, best_meta = artifact.load(chosen)
    best_model.to(device)
    result = evaluate_dev(best_model, dev_data, news_dev_data, pad_id, device, cfg.eval_batch_size)
    best_meta.temperature_topic = (
        fit_temperature(result["_topic_logits"], result["_topic_labels"]) if "_topic_logits" in result else 1.0
    )
    best_meta.temperature_sentiment = (
        fit_temperature(result["_sentiment_logits"], result["_sentiment_labels"])
        if "_sentiment_logits" in result
        else 1.0
    )
    best_meta.metrics = {
        "dev": {k: v for k, v in result.items() if not k.startswith("_")},
        "history": state["history"],
        "trainable_params": trainable,
        "total_params": total,
        **({"mlflow_run": tracker.run_id} if tracker.run_id else {}),
    }
    out = Path(cfg.out_dir) / cfg.name / cfg.version
    artifact.save(out, best_model, tokenizer, best_meta)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    tracker.artifacts(out)
    tracker.end()
    log.info("model written", extra={"path": str(out), "best_selection": state["best"]})
    return out


@torch.no_grad()
def add_to_average(
    average: dict[str, torch.Tensor] | None, n: int, model: nn.Module
) -> tuple[dict[str, torch.Tensor], int]:
    """The running uniform mean of the model's floating-point weights with one more sample (kept in fp32 on the
    CPU, inside the checkpoint's loop state, so a resumed run averages exactly what an uninterrupted one would).
    Integer buffers (position ids) are left out: they never change."""
    current = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if v.is_floating_point()}
    if average is None:
        return {k: v.clone() for k, v in current.items()}, 1
    for k, v in current.items():
        average[k] += (v - average[k]) / (n + 1)
    return average, n + 1


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """R-Drop's consistency term: the mean over rows of (KL(p_a || p_b) + KL(p_b || p_a)) / 2 between two
    logit tensors of the same texts. Why: two dropout masks that disagree mark a prediction that hangs on a few
    units; penalising it regularises every text, labelled for that head or not."""
    la, lb = torch.log_softmax(a, dim=-1), torch.log_softmax(b, dim=-1)
    kl_ab = (la.exp() * (la - lb)).sum(-1)
    kl_ba = (lb.exp() * (lb - la)).sum(-1)
    return ((kl_ab + kl_ba) / 2).mean()


def run_provenance(cfg: TrainConfig, parent_meta: artifact.ModelMeta | None) -> tuple[str, list[str]]:
    """The licence and the training sets of what ``cfg`` writes. A model continued from another keeps its parent's
    licence and sets (a continued run adds to what the parent read, it does not replace it); one trained from a
    pre-trained base, the base's; pseudo-labels distil their teacher, so its licence too."""
    if parent_meta:
        inherited_licence, earlier = parent_meta.licence, list(parent_meta.training_sets)
    else:
        record = artifact.base_record(cfg.base)
        inherited_licence = record.get("licence", "")
        earlier = [f"pretrain:{s}" for s in record.get("sets", [])]
    teachers = [artifact.load_meta(Path(t)).licence for t in (cfg.pseudo_from, cfg.self_train_from) if t]
    licence = corpus.run_licence(cfg.train_sets, inherited_licence, *teachers)
    return licence, list(dict.fromkeys([*earlier, "twitter-topic", "twitter-sentiment", *cfg.train_sets]))


def check_servable_licence(name: str, licence: str) -> None:
    """Refuse a research-licensed run under the default model's name before it trains: ``Classifier.load()`` serves
    the newest version of that name, so such a run would put non-commercial weights where every command serves
    the permissive default (``artifact.resolve`` skips one that got there by hand)."""
    if name == artifact.DEFAULT_NAME and not commercial(licence):
        raise ConfigError(
            f"this run is {licence!r} and would be written as {name}, the default every command serves: "
            f"name it {name}-research (name = ... in the run config)"
        )


def _save_model(model, tokenizer, cfg, base_name, parent_meta, directory: Path, metrics) -> None:
    """Write the current weights (LoRA merged into a copy, so training can go on) as a model dir."""
    to_save = model
    if cfg.lora:
        to_save = copy.deepcopy(model)
        _merge_lora(to_save)
    licence, training_sets = run_provenance(cfg, parent_meta)
    meta = artifact.ModelMeta(
        name=cfg.name,
        version=cfg.version,
        base=base_name,
        max_length=cfg.max_length,
        metrics={"dev": metrics},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        parent=parent_meta.full_name if parent_meta else None,
        licence=licence,
        training_sets=training_sets,
        domain_prefixes=dict(cfg.domain_prefixes),
    )
    # Checkpoints of the best epoch keep full precision; the shipped copy is cast to fp16 on save.
    artifact.save(directory, to_save, tokenizer, meta, dtype=torch.float32)
