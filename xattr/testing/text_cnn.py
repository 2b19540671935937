"""A tiny text CNN on a synthetic sentiment task, for tests and docs (docs/sanity.md).

The vocabulary has a padding token (id 0), 8 positive words, 8 negative words and 24 neutral
words. A sentence is 6 to 12 neutral words with 1 to 3 sentiment words put in at random places
and padded to 12 tokens; its label is 1 when it holds more positive than negative words (the
counts never tie). `TextCNN` is the model of Kim (2014) made small: embedding -> conv1d ->
ReLU -> max over time -> linear, with the max written as ``x.max(dim=2).values``.
"""

from __future__ import annotations

import torch
from torch import nn

POSITIVE = ("good", "great", "superb", "lovely", "fine", "happy", "brilliant", "enjoyable")
NEGATIVE = ("bad", "awful", "poor", "boring", "dull", "sad", "terrible", "weak")
NEUTRAL = ("the", "a", "movie", "film", "was", "is", "it", "this", "plot", "actor", "scene", "and",
           "of", "to", "story", "very", "quite", "in", "on", "with", "one", "ending", "music", "cast")  # fmt: skip
WORDS = ("<pad>",) + POSITIVE + NEGATIVE + NEUTRAL
PAD = 0


def _id(word: str) -> int:
    return WORDS.index(word)


POSITIVE_IDS = tuple(map(_id, POSITIVE))
NEGATIVE_IDS = tuple(map(_id, NEGATIVE))
NEUTRAL_IDS = tuple(map(_id, NEUTRAL))


def sentiment_data(n: int, *, length: int = 12, generator=0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids (n, length) long, labels (n,) long)`` drawn with ``generator`` (an int seed or a
    torch.Generator): the same seed gives the same sentences."""
    g = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    ids = torch.full((n, length), PAD, dtype=torch.long)
    labels = torch.empty(n, dtype=torch.long)

    def pick(pool, k=1):
        return [pool[int(i)] for i in torch.randint(len(pool), (k,), generator=g)]

    for row in range(n):
        size = int(torch.randint(6, length + 1, (1,), generator=g))
        words = pick(NEUTRAL_IDS, size)
        n_pos, n_neg = 0, 0
        while n_pos == n_neg:
            n_pos, n_neg = (int(v) for v in torch.randint(0, 3, (2,), generator=g))
        chosen = pick(POSITIVE_IDS, n_pos) if n_pos else []
        chosen += pick(NEGATIVE_IDS, n_neg) if n_neg else []
        places = torch.randperm(size, generator=g)[: len(chosen)].tolist()
        for place, word in zip(places, chosen):
            words[place] = word
        ids[row, :size] = torch.tensor(words)
        labels[row] = int(n_pos > n_neg)
    return ids, labels


class TextCNN(nn.Module):
    """embedding (dim) -> conv1d (channels, kernel, same padding) -> ReLU -> max over time -> linear (2)."""

    def __init__(self, vocab: int = len(WORDS), dim: int = 16, channels: int = 16, kernel: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=PAD)
        self.conv = nn.Conv1d(dim, channels, kernel, padding=kernel // 2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(channels, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The model from the embedding's output (B, T, dim) on."""
        z = self.relu(self.conv(h.transpose(1, 2)))
        return self.fc(z.max(dim=2).values)


def train_text_cnn(*, seed: int = 0, n_train: int = 512, steps: int = 120, lr: float = 0.02) -> TextCNN:
    """A `TextCNN` trained full-batch with Adam on ``sentiment_data(n_train, generator=seed)``,
    its weights drawn from ``seed``; returned in eval mode. About a second on one CPU core."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TextCNN()
    ids, labels = sentiment_data(n_train, generator=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(ids), labels)
        loss.backward()
        opt.step()
    return model.eval()
