"""Domain-adaptive pre-training: continue the base encoder's masked-LM training on news headlines and tweets.

Why: the base (all-MiniLM-L6-v2) learned its English from web text and its sentence geometry from paired web
data. The research variant misses its goals on news by a point or more while it meets them on the polar S&P 500
set; a common cure for a small encoder that reads a new register (tickers, "beats estimates", "cut to
neutral") is to let it read that register unlabelled first (Gururangan et al. 2020, "Don't Stop Pretraining").
``finsent pretrain`` writes an encoder directory; ``finsent train`` starts from it when a run config names that
directory as its ``base``.

The sets read are research-only (the unlabelled CNBC/Guardian/Reuters headlines have an unknown licence), so the
directory records its licence and any model trained from it inherits it (``corpus.run_licence``). Texts of every
evaluation set are never read: the unlabelled headlines exclude them (``data.news_unlabelled``), the labelled sets
give their training parts only (``corpus.TRAIN_SETS``) and the Twitter sets their ``train`` files.

The loss is computed on the masked positions only: a MiniLM's vocabulary projection over every position would cost
as much as the encoder itself. The packaged base has no masked-LM head, so a fresh one (its output tied to the
word embeddings, as in BERT) first learns alone for ``head_warmup_steps`` while the encoder is frozen; a random
head's gradients would otherwise scramble the encoder in the first steps.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tomllib
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn
from tqdm import tqdm

from finsent.errors import ConfigError
from finsent.model import artifact, checkpoint, corpus
from finsent.model.batching import bucketed_batches, pad, sorted_batches
from finsent.model.data import check_data_dir, evaluation_texts, load_twitter, normalised
from finsent.model.domain import check_prefixes, tag
from finsent.model.text import prepare
from finsent.model.train import _lr_lambda, _seed_everything, pick_device

if TYPE_CHECKING:
    from transformers import BertConfig, BertModel

log = logging.getLogger("finsent.model.pretrain")

TWITTER = "twitter-train"  # the Twitter sets' training texts (MIT); every other name is a ``corpus.TRAIN_SETS`` set
IGNORE = -100
PRETRAIN_FILE = "pretrain.json"


@dataclass
class PretrainConfig:
    """One masked-LM run. Written next to the encoder so every base says how it was made."""

    name: str = "minilm-news-mlm"
    version: str = ""  # empty: a UTC timestamp
    base: str = "all-MiniLM-L6-v2"
    data_dir: str = "../shared/data"
    out_dir: str = "runs/bases"
    run_dir: str = "runs"  # checkpoints
    sets: list[str] = field(default_factory=lambda: [TWITTER, "news-unlabelled"])
    domain_prefixes: dict[str, str] = field(default_factory=dict)  # read each text behind its domain's tag
    epochs: int = 1
    batch_size: int = 64
    lr: float = 5e-5
    head_lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    head_warmup_steps: int = 200  # the encoder frozen while the fresh head learns
    mask_prob: float = 0.15
    max_length: int = 96  # as fine-tuning reads: every position it uses is adapted
    heldout_texts: int = 2000  # texts kept out of training to measure the masked-LM loss before and after
    dev_fraction: float = 0.1  # the Twitter dev slice fine-tuning selects on (``data.load_twitter``): never read here
    seed: int = 13
    checkpoint_every: int = 200
    max_steps: int = 0  # >0: checkpoint and stop after this many steps (time-boxed runs); rerun to resume
    limit: int = 0  # >0: only the first N texts (tests, smoke runs)
    threads: int = 0
    device: str = "auto"

    @classmethod
    def from_toml(cls, path: Path, **overrides: Any) -> PretrainConfig:
        """The run a TOML file describes; anything that cannot work is one ``ConfigError`` naming it."""
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: {err}") from err
        raw = raw.get("pretrain", raw)
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"{path}: unknown pre-training settings {sorted(unknown)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**raw)
        try:
            licence_of(cfg.sets)
            check_prefixes(cfg.domain_prefixes)
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from err
        return cfg

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote the checkpoint (not where or how fast it runs)."""
        loose = {"version", "max_steps", "threads", "device", "out_dir", "run_dir", "checkpoint_every"}
        return {k: v for k, v in asdict(self).items() if k not in loose}


def licence_of(set_names: list[str], base: str = "") -> str:
    """The licence of an encoder pre-trained on ``set_names`` from ``base``: research when either is."""
    inherited = artifact.base_record(base).get("licence", "") if base else ""
    return corpus.run_licence([n for n in set_names if n != TWITTER], inherited)


def texts_of(cfg: PretrainConfig) -> list[tuple[str, str]]:
    """(domain, text behind its domain's tag) for each named set's training texts, once each (by normalised text),
    in a seeded order. No text a model is scored or selected on is read, in any casing (``data.evaluation_texts``):
    the Twitter train and valid files share a few texts, and the sets' held-out cut hashes the text as given."""
    data_dir = Path(cfg.data_dir)
    seen = evaluation_texts(data_dir, cfg.dev_fraction)
    out: list[tuple[str, str]] = []
    for name in cfg.sets:
        if name == TWITTER:
            examples = load_twitter(data_dir, cfg.dev_fraction).train
        else:
            examples = corpus.TRAIN_SETS[name].load(data_dir)
        added = 0
        for ex in examples:
            key = normalised(ex.text)
            if key and key not in seen:
                seen.add(key)
                out.append((ex.domain, tag(cfg.domain_prefixes, ex.domain, prepare(ex.text))))
                added += 1
        log.info("pre-training set added", extra={"set": name, "texts": len(examples), "new": added})
    random.Random(cfg.seed).shuffle(out)
    return out[: cfg.limit] if cfg.limit else out


def mask_tokens(
    ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int, prob: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``prob`` of the non-special tokens are chosen; 80 % of those become [MASK], 10 % a random
    token, 10 % stay. Returns (inputs, labels), labels ``IGNORE`` where nothing was chosen. At least one token per
    batch is chosen, so every batch has a loss."""
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & ~special
    if not chosen.any():
        candidates = (~special).nonzero()
        if len(candidates):
            row, col = candidates[torch.randint(len(candidates), (1,), generator=generator)][0]
            chosen[row, col] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    inputs = ids.clone()
    roll = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = mask_id
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = torch.randint(vocab_size, ids.shape, generator=generator)[swap]
    return inputs, labels


class MaskedLM(nn.Module):
    """The encoder plus BERT's masked-LM head (transform, then the word embeddings as output weights)."""

    def __init__(self, encoder: BertModel):
        super().__init__()
        config = cast("BertConfig", encoder.config)  # a BertModel's (its config_class); the stub says the base class
        self.encoder = encoder
        self.transform = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
        )
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        chosen = labels != IGNORE
        logits = nn.functional.linear(
            self.transform(hidden[chosen]), self.encoder.embeddings.word_embeddings.weight, self.bias
        )
        return nn.functional.cross_entropy(logits, labels[chosen])


class _Batcher:
    """Token ids of the texts, padded and masked per batch. Never masked: the tokenizer's specials, padding and the
    domain tag's tokens after [CLS] (a near-constant word would spend masks on nothing to learn)."""

    def __init__(self, texts: list[tuple[str, str]], tokenizer, max_length: int, mask_prob: float, prefixes):
        self.ids = tokenizer([t for _, t in texts], truncation=True, max_length=max_length)["input_ids"]
        tag_tokens = {d: len(tokenizer(p, add_special_tokens=False)["input_ids"]) for d, p in prefixes.items()}
        self.tagged = [tag_tokens.get(domain, 0) for domain, _ in texts]
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.pad_id = tokenizer.pad_token_id or 0
        self.mask_id = tokenizer.mask_token_id
        self.vocab = len(tokenizer)
        self.mask_prob = mask_prob

    def __call__(self, rows: list[int], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        ids, attention = pad([self.ids[i] for i in rows], self.pad_id)
        special = torch.isin(ids, self.special_ids) | (attention == 0)
        for row, i in enumerate(rows):
            special[row, 1 : 1 + self.tagged[i]] = True
        inputs, labels = mask_tokens(ids, special, self.mask_id, self.vocab, self.mask_prob, generator)
        return inputs, attention, labels


@torch.no_grad()
def heldout_loss(model: MaskedLM, batcher: _Batcher, device: torch.device, seed: int) -> float:
    """Mean masked-LM loss over the held-out texts under one fixed masking (the same before and after)."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for rows in sorted_batches([len(x) for x in batcher.ids], 128):
        inputs, attention, labels = batcher(rows, generator)
        n = int((labels != IGNORE).sum())
        total += float(model(inputs.to(device), attention.to(device), labels.to(device))) * n
        count += n
    return total / max(count, 1)


def pretrain(cfg: PretrainConfig, progress: bool = True) -> Path:
    """Continue masked-LM training of ``cfg.base``; write ``<out_dir>/<name>/<version>/`` (an encoder directory
    ``finsent train`` accepts as its ``base``) and return it. A stopped run resumes from its last checkpoint."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg.version = cfg.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    licence = licence_of(cfg.sets, cfg.base)
    out = Path(cfg.out_dir) / cfg.name / cfg.version
    if out.exists():  # before any work: a finished version is not trained again to be refused at the end
        raise ConfigError(f"{out} exists: an encoder version is written once (choose another --version)")
    check_data_dir(Path(cfg.data_dir), "training data directory", "set data_dir in the run config (--run-config)")
    device = pick_device(cfg.device)
    _seed_everything(cfg.seed)
    texts = texts_of(cfg)
    heldout, train_texts = texts[: cfg.heldout_texts], texts[cfg.heldout_texts :]
    if not train_texts or not heldout:
        raise ConfigError(f"{len(texts)} texts: too few for heldout_texts={cfg.heldout_texts} and a training part")

    from transformers import AutoTokenizer, BertModel

    base = artifact.base_path(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = MaskedLM(BertModel.from_pretrained(base, add_pooling_layer=False)).to(device)
    train_batches = _Batcher(train_texts, tokenizer, cfg.max_length, cfg.mask_prob, cfg.domain_prefixes)
    heldout_batches = _Batcher(heldout, tokenizer, cfg.max_length, cfg.mask_prob, cfg.domain_prefixes)

    steps_per_epoch = math.ceil(len(train_texts) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.head_warmup_steps >= total_steps:
        raise ConfigError(
            f"head_warmup_steps={cfg.head_warmup_steps} leaves none of the {total_steps} steps to the encoder"
        )
    no_decay = ("bias", "LayerNorm", "transform.2")
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        key = (name.startswith("encoder"), not any(nd in name for nd in no_decay))
        groups.setdefault(key, []).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": ps, "lr": cfg.lr if enc else cfg.head_lr, "weight_decay": cfg.weight_decay if decay else 0.0}
            for (enc, decay), ps in groups.items()
        ],
        eps=1e-6,
    )
    encoder_steps = max(1, total_steps - cfg.head_warmup_steps)
    encoder_schedule = _lr_lambda(encoder_steps, int(cfg.warmup_ratio * encoder_steps))
    head_schedule = _lr_lambda(total_steps, int(cfg.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        [
            (lambda s: encoder_schedule(max(0, s - cfg.head_warmup_steps))) if enc else head_schedule
            for (enc, _decay) in groups
        ],
    )

    run_dir = Path(cfg.run_dir) / f"pretrain-{cfg.name}-{cfg.version}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    state: dict[str, Any] = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "losses": []}
    resumed = checkpoint.restore(ckpt_path, model, optimizer, scheduler, fingerprint=cfg.fingerprint())
    if resumed is not None:
        state = resumed
        log.info("resumed", extra={"checkpoint": str(ckpt_path), "global_step": state["global_step"]})
    else:
        state["fingerprint"] = cfg.fingerprint()
        state["heldout_loss_before"] = heldout_loss(model, heldout_batches, device, cfg.seed)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log.info(
        "pre-training",
        extra={
            "texts": len(train_texts),
            "heldout": len(heldout),
            "steps": total_steps,
            "device": str(device),
            "heldout_loss_before": round(state["heldout_loss_before"], 4),
        },
    )

    def save_checkpoint() -> None:
        checkpoint.save(ckpt_path, model, optimizer, scheduler, state)

    encoder_params = list(model.encoder.parameters())
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        batches = bucketed_batches([len(x) for x in train_batches.ids], cfg.batch_size, cfg.seed, epoch)
        model.train()
        bar = tqdm(total=len(batches), initial=state["step_in_epoch"], desc=f"mlm {epoch + 1}/{cfg.epochs}",
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
        running = 0.0
        for i in range(state["step_in_epoch"], len(batches)):
            frozen = state["global_step"] < cfg.head_warmup_steps
            for p in encoder_params:
                p.requires_grad_(not frozen)
            # the masking of step k is a function of (seed, k) alone, so a resumed run masks what the first would have
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["global_step"])
            inputs, attention, labels = train_batches(batches[i], generator)
            loss = model(inputs.to(device), attention.to(device), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            running = 0.98 * running + 0.02 * loss.item() if running else loss.item()
            state["step_in_epoch"], state["global_step"] = i + 1, state["global_step"] + 1
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}", frozen=frozen)
            if state["global_step"] == cfg.head_warmup_steps:  # the fair "before": a trained head on the base encoder
                state["heldout_loss_base_encoder"] = heldout_loss(model, heldout_batches, device, cfg.seed)
                model.train()
                log.info("head warmed up", extra={"heldout_loss": round(state["heldout_loss_base_encoder"], 4)})
            if cfg.checkpoint_every and state["global_step"] % cfg.checkpoint_every == 0:
                state["losses"].append([state["global_step"], round(running, 4)])
                save_checkpoint()
                log.info(
                    "checkpoint", extra={"step": state["global_step"], "of": total_steps, "loss": round(running, 4)}
                )
            if cfg.max_steps and state["global_step"] >= cfg.max_steps:
                save_checkpoint()
                bar.close()
                log.info("paused", extra={"global_step": state["global_step"], "checkpoint": str(ckpt_path)})
                return run_dir
        bar.close()
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        save_checkpoint()

    after = heldout_loss(model, heldout_batches, device, cfg.seed)
    partial = out.with_name(
        out.name + ".partial"
    )  # the directory appears whole, licence record included, or not at all
    shutil.rmtree(partial, ignore_errors=True)
    model.encoder.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    record = {
        "config": asdict(cfg),
        "base": cfg.base,
        "licence": licence,
        # the text every encoder in the chain read: a base pre-trained from another keeps its sets
        "sets": [*artifact.base_record(cfg.base).get("sets", []), *cfg.sets],
        "texts": len(train_texts),
        "heldout_texts": len(heldout),
        "heldout_loss_before": state["heldout_loss_before"],  # a random head: how far the head had to come
        "heldout_loss_base_encoder": state.get("heldout_loss_base_encoder"),  # after the warm-up, encoder untouched
        "heldout_loss_after": after,
        "losses": state["losses"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (partial / PRETRAIN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    partial.rename(out)
    log.info(
        "encoder written",
        extra={"path": str(out), "heldout_loss_base_encoder": record["heldout_loss_base_encoder"],
               "heldout_loss_after": round(after, 4)},
    )  # fmt: skip
    return out
