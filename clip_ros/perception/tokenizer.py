"""
Offline CLIP tokenisation from open_clip's bundled BPE vocabulary, without torch.

transformers' CLIPTokenizer.from_pretrained offline yields a 2-token vocabulary; the BPE file
bundled with open_clip gives the real ids, shared by CLIP and CLIPSeg text towers. The byte-pair
encoding is CLIP's (open_clip.tokenizer.SimpleTokenizer, 'lower' cleaning, plain truncation),
re-done here on numpy so a Triton client never imports torch: open_clip's module does. The
tests hold the ids equal to open_clip's.
"""
from functools import lru_cache
import gzip
import html
import importlib.util
import os

import ftfy
import numpy as np
import regex

CONTEXT_LENGTH = 77
BPE_FILE = 'bpe_simple_vocab_16e6.txt.gz'
MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 256 bytes x 2, the merges, start and end
START, END = '<start_of_text>', '<end_of_text>'


def bpe_path() -> str:
    """Return open_clip's BPE vocabulary file (found without importing open_clip)."""
    spec = importlib.util.find_spec('open_clip')
    if spec is None or not spec.submodule_search_locations:
        raise ValueError('tokenising needs the open_clip package (its BPE vocabulary file)')
    return os.path.join(list(spec.submodule_search_locations)[0], BPE_FILE)


def _byte_symbols() -> dict:
    """Map each byte to a printable character, as CLIP's BPE vocabulary spells bytes."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
                 *range(ord('®'), ord('ÿ') + 1)]
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


class BpeTokenizer:
    """CLIP's lower-casing byte-pair encoder over open_clip's vocabulary file."""

    def __init__(self, path: str = None):
        with gzip.open(path or bpe_path()) as f:
            lines = f.read().decode('utf-8').split('\n')
        merges = [tuple(line.split()) for line in lines[1:MERGES + 1]]
        self.bytes = _byte_symbols()
        symbols = list(self.bytes.values())
        vocab = symbols + [s + '</w>' for s in symbols] + [''.join(m) for m in merges]
        self.ids = {token: i for i, token in enumerate([*vocab, START, END])}
        self.start, self.end = self.ids[START], self.ids[END]
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.pattern = regex.compile(
            rf"{START}|{END}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE)
        self._words = lru_cache(maxsize=8192)(self._merge)

    def _merge(self, token: str) -> tuple:
        """Return the BPE pieces of one pre-token (its last symbol ends the word)."""
        if token in (START, END):
            return (token,)
        word = (*token[:-1], token[-1] + '</w>')
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float('inf')))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list:
        """Return the BPE ids of a text (no start or end id)."""
        text = ' '.join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()
        ids = []
        for token in self.pattern.findall(text):
            symbols = ''.join(self.bytes[b] for b in token.encode('utf-8'))
            ids += [self.ids[piece] for piece in self._words(symbols)]
        return ids


@lru_cache(maxsize=1)
def _tokenizer() -> BpeTokenizer:
    return BpeTokenizer()


def token_ids(texts, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
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
    int64 [N, context_length]: start id, BPE ids, end id, then zeros.

    """
    if isinstance(texts, str):
        texts = [texts]
    if not all(isinstance(text, str) for text in texts):
        raise ValueError(f'tokenize expects strings, got {[type(t).__name__ for t in texts]}')
    if context_length < 2:
        raise ValueError(f'context_length must be >= 2 (start and end ids), got {context_length}')
    result = np.zeros((len(texts), context_length), np.int64)
    bpe = _tokenizer() if texts else None
    for row, text in enumerate(texts):
        ids = [bpe.start, *bpe.encode(text)][:context_length - 1] + [bpe.end]
        result[row, :len(ids)] = ids
    return result


def token_count(text: str) -> int:
    """Return how many BPE tokens `text` takes, without the start and end ids."""
    return len(_tokenizer().encode(text))


def tokenize(texts, context_length: int = CONTEXT_LENGTH):
    """Return token_ids as a torch LongTensor [N, context_length] (for the torch towers)."""
    import torch
    return torch.from_numpy(token_ids(texts, context_length))
