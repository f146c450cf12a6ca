"""Per-(model, phrase) cache of text embeddings."""
from collections import OrderedDict
import threading
from typing import Callable

import numpy as np


class TextCache:
    """
    Encode each phrase once per model id; only new phrases reach the encoder.

    Parameters
    ----------
    encode
        maps a list of phrases to a Tensor [N, D] (torch, or numpy for a torch-free client).
    model_id
        unique model name; entries are keyed by (model_id, phrase).
    max_entries
        least recently used entries beyond this are dropped.

    """

    def __init__(self, encode: Callable, model_id: str, max_entries: int = 4096):
        if max_entries < 1:
            raise ValueError(f'max_entries must be >= 1, got {max_entries}')
        self._encode = encode
        self.model_id = model_id
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries = OrderedDict()
        # Several grounding workers share one pipeline: look-ups, stores and evictions must
        # not interleave (the encoder runs under the lock too; it is fast and rare).
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return len(self._entries)

    def set_model(self, encode: Callable, model_id: str) -> None:
        """Switch encoder; entries of other model ids are no longer served."""
        self._encode = encode
        self.model_id = model_id

    def clear(self) -> None:
        """Drop all entries and reset the counters."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def get(self, phrases):
        """Return embeddings [N, D] in phrase order, encoding only the missing phrases."""
        with self._lock:
            return self._get(phrases)

    def _get(self, phrases):
        if isinstance(phrases, str):
            phrases = [phrases]
        if not phrases:
            raise ValueError('TextCache.get needs at least one phrase')
        rows = {}
        for phrase in dict.fromkeys(phrases):
            key = (self.model_id, phrase)
            if key in self._entries:
                self._entries.move_to_end(key)
                rows[phrase] = self._entries[key]
        missing = [p for p in dict.fromkeys(phrases) if p not in rows]
        self.misses += len(missing)
        self.hits += len(phrases) - len(missing)
        if missing:
            rows.update(self._store(missing, self._encode(missing)))
        return _stack([rows[p] for p in phrases])

    def _store(self, phrases: list, embeddings) -> dict:
        if embeddings.shape[0] != len(phrases):
            raise ValueError(
                f'encoder returned {embeddings.shape[0]} rows for {len(phrases)} phrases')
        detach = getattr(embeddings, 'detach', None)  # torch rows must not hold a graph
        fresh = dict(zip(phrases, detach() if detach else embeddings))
        for phrase, row in fresh.items():
            self._entries[(self.model_id, phrase)] = row
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return fresh


def _stack(rows: list):
    """Stack cached rows the way the encoder made them: numpy rows stay numpy."""
    if isinstance(rows[0], np.ndarray):
        return np.stack(rows)
    import torch
    return torch.stack(rows)
