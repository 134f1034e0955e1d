"""Label vocabularies of the two heads.

Kept in one place because the training data, the evaluation report, the inference API, the metrics
and the feedback store all speak in these names; a second copy would drift.
"""

from __future__ import annotations

TOPIC_LABELS: tuple[str, ...] = (
    "Analyst Update",
    "Fed | Central Banks",
    "Company | Product News",
    "Treasuries | Corporate Debt",
    "Dividend",
    "Earnings",
    "Energy | Oil",
    "Financials",
    "Currencies",
    "General News | Opinion",
    "Gold | Metals | Materials",
    "IPO",
    "Legal | Regulation",
    "M&A | Investments",
    "Macro",
    "Markets",
    "Politics",
    "Personnel Change",
    "Stock Commentary",
    "Stock Movement",
)

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

# zeroshot/twitter-financial-news-sentiment ids: 0 Bearish, 1 Bullish, 2 Neutral.
TWITTER_SENTIMENT_TO_LABEL: dict[int, str] = {0: "negative", 1: "positive", 2: "neutral"}

TOPIC_INDEX = {name: i for i, name in enumerate(TOPIC_LABELS)}
SENTIMENT_INDEX = {name: i for i, name in enumerate(SENTIMENT_LABELS)}
