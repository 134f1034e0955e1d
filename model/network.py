"""The multi-task network: one BERT encoder, a topic head and a sentiment head.

Mean pooling rather than [CLS] because the base (all-MiniLM-L6-v2) was pre-trained with mean pooling,
so its pooled vector is already a good sentence representation and fine-tuning converges faster.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import BertConfig, BertModel

if TYPE_CHECKING:
    from peft import PeftModel


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-6)


class MultiTaskModel(nn.Module):
    def __init__(self, config: BertConfig, n_topics: int, n_sentiments: int, dropout: float = 0.1):
        super().__init__()
        # a PeftModel around the BertModel while LoRA trains (model.train), merged back before it is saved
        self.encoder: BertModel | PeftModel = BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.topic_head = nn.Linear(config.hidden_size, n_topics)
        self.sentiment_head = nn.Linear(config.hidden_size, n_sentiments)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (topic_logits, sentiment_logits)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.dropout(mean_pool(hidden, attention_mask))
        return self.topic_head(pooled), self.sentiment_head(pooled)


def tiny_config(vocab_size: int) -> BertConfig:
    """A very small BERT for plumbing tests (random weights; never a stand-in for accuracy)."""
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,  # deterministic: DDP-vs-single and resume tests compare weights
        attention_probs_dropout_prob=0.0,
    )
