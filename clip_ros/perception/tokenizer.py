"""Offline CLIP tokenisation from open_clip's bundled BPE vocabulary."""
from functools import lru_cache

from open_clip.tokenizer import SimpleTokenizer
import torch

# transformers' CLIPTokenizer.from_pretrained offline yields a 2-token vocabulary; the BPE
# file bundled with open_clip gives the real ids, shared by CLIP and CLIPSeg text towers.
CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def tokenize(texts, context_length: int = CONTEXT_LENGTH) -> torch.LongTensor:
    """
    Tokenise phrases into zero-padded CLIP ids.

    Parameters
    ----------
    texts
        a phrase or a list of phrases.
    context_length
        output length; longer phrases are cut, keeping the end-of-text id.

    Returns
    -------
    LongTensor [N, context_length]: start id, BPE ids, end id, then zeros.

    """
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f'tokenize expects strings, got {[type(t).__name__ for t in texts]}')
    if context_length < 2:
        raise ValueError(f'context_length must be >= 2 (start and end ids), got {context_length}')
    if not texts:
        return torch.zeros(0, context_length, dtype=torch.long)
    return _tokenizer()(list(texts), context_length=context_length)
