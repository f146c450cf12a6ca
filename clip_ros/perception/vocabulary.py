"""
Map a user's object phrase onto the words a closed-vocabulary model was trained on.

A model with a vocabulary (the bundled ``tabletop``: '<colour> <shape>' names) only knows those
words; a synonym such as 'cube' competes in CLIP re-scoring with 'block' and loses. Lexicon
rewrites a phrase word by word:

- a word of the vocabulary stays;
- a word (or words) in the model's synonyms table (config.json 'clip_ros' block, "synonyms":
  word -> vocabulary word) is replaced, so the table is data that travels with the model;
- a plural ('blocks', 'boxes') is read as its singular;
- a filler word (FILLERS: articles, 'object', 'thing', 'one', 'coloured', ...) is dropped;
- any other word gives the reason 'unknown word: <word>' (no look-alike is grounded for it).

A phrase that names two objects ('red block and blue ball', 'red block blue ball') gives
'two objects: red block, blue ball', and one whose words no name holds together ('red green
block') 'conflicting words: red, green'; a repeated word counts once ('red block red'). When
the mapped words are exactly one vocabulary name in another order ('block red') the name itself
is returned ('red block').

A model with an empty vocabulary (pretrained open CLIP/CLIPSeg) is open: the phrase comes back
unchanged and there is never an unknown word (a phrase without any word is 'empty phrase', one
longer than the text encoder reads 'phrase too long').
"""
import itertools
import re
import unicodedata

from clip_ros.perception.tokenizer import CONTEXT_LENGTH, token_count

# Words that carry no object identity; kept short on purpose (a size or place word is not a
# filler: it would silently drop a constraint the user gave).
FILLERS = frozenset((
    'a', 'an', 'the', 'this', 'that', 'some', 'any', 'object', 'objects', 'thing', 'things',
    'item', 'items', 'one', 'ones', 'colored', 'coloured', 'color', 'colour', 'shaped'))
# Words that join two object mentions inside one phrase.
SEPARATORS = frozenset(('and', 'or', 'plus', ',', '&'))

_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[,&]")


def words_of(text: str) -> list[str]:
    """Return lowercase words of `text` (NFKC; hyphens and punctuation split, commas kept)."""
    text = unicodedata.normalize('NFKC', str(text)).lower().replace('\u2019', "'")
    return _TOKEN_RE.findall(text)


class Lexicon:
    """A model's vocabulary and synonyms table; canonical() maps a phrase onto its words."""

    def __init__(self, vocabulary=(), synonyms=None):
        """
        Build the lexicon.

        Parameters
        ----------
        vocabulary
            the model's object names ('red block', ...); empty for an open model.
        synonyms
            word or words -> vocabulary word(s), e.g. {'cube': 'block', 'violet': 'purple'}.
            Ignored for an open model.

        Raises
        ------
        ValueError
            a synonym maps onto a word the vocabulary does not have, or is not a string.

        """
        self.vocabulary = tuple(vocabulary or ())
        self._names = {}  # sorted word tuple -> vocabulary name, to restore word order
        for name in self.vocabulary:
            self._names.setdefault(tuple(sorted(words_of(name))), ' '.join(words_of(name)))
        self.words = frozenset(w for name in self.vocabulary for w in words_of(name))
        # The last word of each name is its head noun ('block'); two heads mean two objects.
        self.heads = frozenset(words_of(name)[-1] for name in self.vocabulary if words_of(name))
        # Pairs of the other words (colours) that one name holds together: 'red green block'
        # names no object of a model whose names have one colour each.
        self._together = {frozenset(pair) for name in self.vocabulary
                          for pair in itertools.combinations(
                              set(words_of(name)) - self.heads, 2)}
        self.synonyms = {}
        for key, value in (synonyms or {}).items() if self.vocabulary else ():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f'synonyms must map strings to strings, got {key!r}: {value!r}')
            target = tuple(words_of(value))
            unknown = [w for w in target if w not in self.words]
            if not target or unknown:
                raise ValueError(f'synonym {key!r} maps to {value!r}, which is not made of the '
                                 f"model's words (unknown: {', '.join(unknown) or value!r})")
            source = tuple(words_of(key))
            if source and source != target and not (len(source) == 1 and source[0] in self.words):
                self.synonyms[source] = target  # a model word is never rewritten
        self._longest = max((len(k) for k in self.synonyms), default=1)

    @property
    def is_open(self) -> bool:
        """Tell whether the model has no fixed vocabulary (any words pass unchanged)."""
        return not self.vocabulary

    def canonical(self, phrase: str) -> tuple:
        """
        Map `phrase` onto the model's words.

        Returns
        -------
        (text, None) with the mapped phrase, or (phrase, reason) with reason
        'unknown word: <word>', 'two objects: <a>, <b>', 'empty phrase' or (open models)
        'phrase too long: ...'.

        """
        if self.is_open:
            if not words_of(phrase):
                return phrase, 'empty phrase'
            # The text towers read CONTEXT_LENGTH ids: the rest would be cut without a word.
            tokens = token_count(phrase)
            if tokens > CONTEXT_LENGTH - 2:
                return phrase, (f'phrase too long: {tokens} tokens, the text encoder reads '
                                f'{CONTEXT_LENGTH - 2}')
            return phrase, None
        objects, current = [], []
        for word in self._map(words_of(phrase)) + [',']:
            if word in SEPARATORS:
                if current:
                    objects.append(current)
                current = []
                continue
            if word not in self.words:
                return phrase, f'unknown word: {word}'
            heads = [k for k, w in enumerate(current) if w in self.heads]
            if word in self.heads and heads:
                # 'red block blue ball': a second head noun ends the object at the first one.
                objects.append(current[:heads[-1] + 1])
                current = current[heads[-1] + 1:]
            current.append(word)
        if not objects:
            return phrase, 'empty phrase'
        if len(objects) > 1:
            return phrase, 'two objects: ' + ', '.join(self._join(o) for o in objects)
        words = list(dict.fromkeys(objects[0]))  # 'red block red' is the red block
        modifiers = [w for w in words if w not in self.heads]
        for pair in itertools.combinations(modifiers, 2):
            if frozenset(pair) not in self._together:
                return phrase, f'conflicting words: {pair[0]}, {pair[1]}'
        return self._join(words), None

    def _map(self, words: list) -> list:
        """Replace synonyms (longest match first) and plurals; drop fillers."""
        out, i = [], 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                target = self._lookup(tuple(words[i:i + n]))
                if target is not None:
                    out.extend(target)
                    i += n
                    break
            else:
                if words[i] not in FILLERS:
                    out.append(words[i])
                i += 1
        # 'tin can' -> 'cylinder cylinder' is one object.
        return [w for k, w in enumerate(out) if k == 0 or w != out[k - 1]]

    def _lookup(self, key: tuple):
        """Return the model words for `key` (a word, a synonym or a plural of one), else None."""
        for form in (key, *_singulars(key)):
            if len(form) == 1 and form[0] in self.words:
                return form
            if form in self.synonyms:
                return self.synonyms[form]
        return None

    def _join(self, words: list) -> str:
        """Join words, in a vocabulary name's order when they are exactly that name."""
        return self._names.get(tuple(sorted(words)), ' '.join(words))


def _singulars(key: tuple) -> list:
    """Return singular readings of the last word: 'boxes' -> 'box', 'blocks' -> 'block'."""
    last = key[-1]
    forms = []
    if last.endswith('es') and len(last) > 3:
        forms.append(key[:-1] + (last[:-2],))
    if last.endswith('s') and not last.endswith('ss') and len(last) > 2:
        forms.append(key[:-1] + (last[:-1],))
    return forms
