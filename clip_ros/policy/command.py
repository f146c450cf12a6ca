"""
Parse short natural-language robot commands into a verb and phrases to ground.

Verb vocabulary (canonical verb: phrases that select it at the start of a clause):

========  ==============================================================================
verb      phrases
========  ==============================================================================
pick      pick up, pick, grab, grasp, get me, get, take, fetch, lift, bring me, bring,
          hand me, carry, give me, i need, i want, i would like, i'd like
place     put, place, drop, set, stack, insert; pick-style verbs with ``into``/``onto``/
          ``to X``; ``move X`` with a destination (``move X into Y``) or no qualifier
push      push, shove, slide, nudge, poke; ``move X`` with a direction (``move X left``)
point     point at, point to, point
go_to     go to, move to, navigate to, drive to, head to, come to, approach, go
find      where is, where are, where's, find, locate, show me, look for, search for,
          highlight, is there, are there, do you see, can you see, where
========  ==============================================================================

A command with no known verb keeps ``verb=None`` and its cleaned text becomes the target
phrase(s). Targets are split on commas, ``and`` and ``or``. ``grab X and put it in Y`` is one
pick-and-place: ``verb='place'``, ``targets=['X']``, ``destination='Y'``.

Cleaning: NFKC, lowercase, punctuation removed (commas split phrases), politeness (please,
could you, can you, would you, kindly, thanks, i want to, i need to) and determiners (a, an, the,
this, that, these, those, some) dropped, whitespace normalised. A polite opening that is the
start of a verb phrase stays a verb ('can you see the cup' is find).

Phrase forms: 'the block that is red' / 'which is' / "that's" -> 'red block' (a description of
at most two words moves before its noun; one that starts with a relation stays after it:
'the block that is next to the cup' -> 'block next to cup'); 'red colored block', 'red coloured
block', 'red-coloured block', 'the block that is colored red' -> 'red block'. Synonyms ('cube')
are left to the model's Lexicon (clip_ros.perception.vocabulary), which knows its words.

Input longer than ``MAX_COMMAND_CHARS`` is cut at a word boundary (``truncate``).
``parse_command`` never raises.

This is the one parse of a command: grounding_node and vla_policy_node both call it on the same
text, so the phrases grounded are exactly the phrases the policy waits for.
"""
from dataclasses import dataclass, field
import re
import unicodedata

MAX_COMMAND_CHARS = 1000
# Phrases grounded at once (grounding_node, ground_bag). Each is a CLIPSeg map at frame size
# and a log line when not found: a cap keeps a long list in one command from costing seconds a
# frame and gigabytes (246 phrases: 4 s, +1 GB).
MAX_PHRASES = 32

_VERBS = {
    'pick': ('pick up', 'pick', 'grab', 'grasp', 'get me', 'get', 'take', 'fetch', 'lift',
             'bring me', 'bring', 'hand me', 'carry', 'give me', 'i need', 'i want',
             'i would like', "i'd like"),
    'place': ('put', 'place', 'drop', 'set', 'stack', 'insert'),
    'move': ('move',),  # resolved to place or push once the clause is parsed
    'push': ('push', 'shove', 'slide', 'nudge', 'poke'),
    'point': ('point at', 'point to', 'point'),
    'go_to': ('go to', 'move to', 'navigate to', 'drive to', 'head to', 'come to',
              'approach', 'go'),
    'find': ('where is', 'where are', "where's", 'find', 'locate', 'show me', 'look for',
             'search for', 'highlight', 'is there', 'are there', 'do you see', 'can you see',
             'where'),
}
_VERB_PHRASES = {tuple(p.split()): verb for verb, ps in _VERBS.items() for p in ps}
_MAX_VERB_LEN = max(len(p) for p in _VERB_PHRASES)

_DIRECTIONS = {
    'left': 'left', 'right': 'right', 'forward': 'forward', 'forwards': 'forward',
    'ahead': 'forward', 'backward': 'backward', 'backwards': 'backward', 'back': 'backward',
    'up': 'up', 'upward': 'up', 'upwards': 'up', 'down': 'down', 'downward': 'down',
    'downwards': 'down', 'away': 'away', 'closer': 'closer',
}
# Words between the object and a direction: 'push it a bit over to the left'.
_DIRECTION_LEAD = {'to', 'towards', 'toward', 'over', 'a', 'an', 'the', 'bit', 'little',
                   'slightly', 'further', 'more'}
# A direction after these is a location ('the cup on the left'), not a motion.
_LOCATIVE = {'on', 'at', 'in', 'from', 'of'}
_PLACE_PREPS = tuple(tuple(p.split()) for p in (
    'on top of', 'in front of', 'next to', 'inside of', 'inside', 'into', 'onto', 'in', 'on',
    'to', 'towards', 'toward', 'beside', 'near', 'behind', 'under', 'underneath', 'above',
    'over', 'at'))
_PICK_PREPS = (('into',), ('onto',), ('to',))
# 'to' after these belongs to the object phrase: 'the block next to the cup'.
_RELATION_BEFORE_TO = {'next', 'close', 'closer', 'closest', 'nearest', 'near', 'adjacent',
                       'up', 'left', 'right'}

_ARTICLES = {'a', 'an', 'the', 'this', 'that', 'these', 'those', 'some'}
_PRONOUNS = {'it', 'them', 'they', 'him', 'her', 'one', 'something', 'me'}
_POLITE_ANYWHERE = (('please',), ('pls',), ('plz',), ('kindly',), ('thanks',), ('thank', 'you'))
_POLITE_LEADING = tuple(tuple(p.split()) for p in (
    'could you', 'can you', 'would you', 'will you', 'could u', 'can u', 'i want you to',
    'i would like you to', "i'd like you to", 'i need you to', 'i want to', 'i need to',
    'i would like to', "i'd like to", 'go ahead and', 'try to', 'just',
    'now', 'then', 'also', 'hey', 'hi', 'hello', 'ok', 'okay', 'alright', 'and', ','))
_POLITE_TRAILING = (('for', 'me'), ('right', 'now'), ('now',), (',',))
_CONJUNCTIONS = {',', 'and', 'then', 'also'}
# 'the block that is red' -> 'red block'; 'block that is next to the cup' -> 'block next to cup'.
_RELATIVE = (('that', 'is'), ('which', 'is'), ('that', 'are'), ('which', 'are'), ("that's",),
             ('that', 'looks'), ('which', 'looks'))
_COLOURED = {'colored', 'coloured', 'color', 'colour'}
_COLOURED_SUFFIXES = tuple(f'-{w}' for w in _COLOURED)
# After 'that is', these start a relation that stays after the noun.
RELATION_WORDS = {w for p in _PLACE_PREPS for w in p} | _RELATION_BEFORE_TO | {
    'of', 'from', 'with', 'by', 'closest', 'nearest', 'farthest', 'furthest', 'between'}
_SEPARATORS = {',', 'and', 'or'}
# 'put down the cup', 'put the cup back in the bowl': part of the verb, not of the object.
_PARTICLES = {'down', 'back'}
# A command with one of these says what not to do ("don't grab the red block, grab the blue
# ball"): acting on its phrases could touch the very object it forbids.
NEGATIONS = {'not', "don't", 'dont', "doesn't", "didn't", "won't", 'never', 'instead',
             'except', 'without', 'avoid'}

_TOKEN_RE = re.compile(r"\w+(?:[.'-]\w+)*|[,;.!?&]")


@dataclass
class Command:
    """A parsed command; ``targets`` are the phrases to ground in the image."""

    text: str  # the input, cut to MAX_COMMAND_CHARS at a word boundary
    verb: str | None = None  # canonical verb (see module table) or None if unknown
    targets: list[str] = field(default_factory=list)
    destination: str | None = None  # where a place/push should end up
    direction: str | None = None  # left, right, forward, backward, up, down, away, closer
    truncated: int = 0  # characters cut from the input (0: the whole input was parsed)
    relation: str | None = None  # the words before the destination: 'in', 'next to', ...
    negation: str = ''  # a word that says what not to do ("don't", 'instead', ...), if any

    @property
    def phrases(self) -> list[str]:
        """Return every phrase to ground: the targets, then the destination, no repeats."""
        destination = [self.destination] if self.destination else []
        return list(dict.fromkeys(self.targets + destination))


def quote(text: str, limit: int = 80) -> str:
    """Return `text` quoted for a log line or status, cut to `limit` characters with its length."""
    if len(text) <= limit:
        return repr(text)
    return f'{text[:limit]!r}... ({len(text)} characters)'


def truncate(text: str) -> str:
    """Cut `text` to at most MAX_COMMAND_CHARS at a word boundary, so no half word is a phrase."""
    if len(text) <= MAX_COMMAND_CHARS:
        return text
    head = text[:MAX_COMMAND_CHARS + 1]
    if head[-1].isspace() or len(head.split()) == 1:
        return head[:-1].rstrip() or head[:-1]
    return head.rsplit(maxsplit=1)[0]


def parse_command(text: str) -> Command:
    """
    Parse a command; never raises.

    Parameters
    ----------
    text
        free text such as 'please pick up the blue block'. Non-str input gives an
        empty Command; input longer than MAX_COMMAND_CHARS is cut at a word boundary.

    Returns
    -------
    Command with a canonical verb (or None), target phrases, destination and direction.

    """
    if not isinstance(text, str):
        return Command(text='')
    cut = truncate(text)
    tokens = _strip_trailing(_strip_leading(_tokenize(cut)))
    clauses = [_parse_clause(_strip_leading(c)) for c in _split_clauses(tokens)]
    command = _merge(cut, clauses)
    command.truncated = len(text) - len(cut)
    command.negation = next((t for t in tokens if t in NEGATIONS), '')
    return command


def _tokenize(text: str) -> list[str]:
    text = unicodedata.normalize('NFKC', text).lower().replace('\u2019', "'")
    tokens = []
    for tok in _TOKEN_RE.findall(text):
        if tok in ',;.!?':
            tok = ','
        elif tok == '&':
            tok = 'and'
        tokens.append(tok)
    return _remove_all(tokens, _POLITE_ANYWHERE)


def _remove_all(tokens: list[str], phrases) -> list[str]:
    out, i = [], 0
    while i < len(tokens):
        n = _match(tokens, i, phrases)
        if n:
            i += n
        else:
            out.append(tokens[i])
            i += 1
    return out


def _match(tokens: list[str], i: int, phrases) -> int:
    """Return the length of the longest phrase matching tokens[i:], 0 if none."""
    best = 0
    for p in phrases:
        if len(p) > best and tuple(tokens[i:i + len(p)]) == p:
            best = len(p)
    return best


def _strip_leading(tokens: list[str]) -> list[str]:
    i = 0
    while i < len(tokens):
        n = _match(tokens, i, _POLITE_LEADING)
        verb = _match_verb(tokens, i)
        if n and verb and verb[1] > n:  # 'can you see the cup' is a verb, not politeness
            break
        # 'robot, pick up ...' addresses the robot; 'the robot' alone stays a target.
        if not n and tokens[i] == 'robot' and tokens[i + 1:i + 2] == [',']:
            n = 2
        if not n:
            break
        i += n
    return tokens[i:]


def _strip_trailing(tokens: list[str]) -> list[str]:
    changed = True
    while changed and tokens:
        changed = False
        for p in _POLITE_TRAILING:
            if len(tokens) > len(p) and tuple(tokens[-len(p):]) == p:
                tokens, changed = tokens[:-len(p)], True
    return tokens if tokens != [','] else []


def _match_verb(tokens: list[str], i: int) -> tuple[str, int] | None:
    for n in range(min(_MAX_VERB_LEN, len(tokens) - i), 0, -1):
        verb = _VERB_PHRASES.get(tuple(tokens[i:i + n]))
        if verb is not None:
            return verb, n
    return None


def _split_clauses(tokens: list[str]) -> list[list[str]]:
    """Split where a conjunction run is followed by a verb: 'grab X and put it in Y'."""
    clauses, current, i = [], [], 0
    while i < len(tokens):
        j = i
        while j < len(tokens) and tokens[j] in _CONJUNCTIONS:
            j += 1
        if j > i and current and j < len(tokens) and _match_verb(tokens, j):
            clauses.append(current)
            current = []
        else:
            current.extend(tokens[i:j] if j > i else tokens[i:i + 1])
        i = max(j, i + 1)
    clauses.append(current)
    return clauses


def _parse_clause(tokens: list[str]) -> Command:
    match = _match_verb(tokens, 0)
    verb, rest = (match[0], tokens[match[1]:]) if match else (None, tokens)
    if verb in ('pick', 'find') and rest[:1] == ['me']:
        rest = rest[1:]
    if verb == 'pick' and len(rest) > 1 and rest[-1] == 'up':  # 'pick the cup up'
        rest = rest[:-1]
    if verb == 'place' and len(rest) > 1 and rest[0] in _PARTICLES:  # 'put down the cup'
        rest = rest[1:]
    direction = destination = relation = None
    if verb in ('place', 'move', 'push', 'go_to'):
        direction, rest, destination = _extract_direction(rest)
        relation = f'{direction} of' if destination else None
    if destination is None and verb in ('place', 'move', 'push'):
        rest, destination, relation = _split_at(rest, _PLACE_PREPS)
    elif verb == 'pick':
        rest, destination, relation = _split_at(rest, _PICK_PREPS)
        if destination in _DIRECTIONS:  # 'take the block to the left': a way, not a place
            direction, destination, relation = _DIRECTIONS[destination], None, None
        verb = 'place' if destination or direction else verb
    if verb == 'move':
        verb = 'push' if direction and not destination else 'place'
    if verb == 'place' and len(rest) > 1 and rest[-1] in _PARTICLES:  # 'put the cup back in'
        rest = rest[:-1]
    return Command('', verb, _split_targets(rest), destination, direction, relation=relation)


def _extract_direction(rest: list[str]):
    """Find a motion direction: 'X to the left', 'X left', 'to the left of Y'."""
    for k, tok in enumerate(rest):
        if tok not in _DIRECTIONS:
            continue
        after = rest[k + 1:]
        if after and not (after[0] == 'of' and len(after) > 1):
            continue
        before = rest[:k]
        while before and before[-1] in _DIRECTION_LEAD:
            before = before[:-1]
        if before and before[-1] in _LOCATIVE:
            continue
        destination = _phrase(after[1:]) if after else None
        return _DIRECTIONS[tok], before, destination
    return None, rest, None


def _split_at(rest: list[str], preps) -> tuple[list[str], str | None, str | None]:
    """Split off the destination: (object tokens, destination, the words between them)."""
    for k in range(len(rest)):
        n = _match(rest, k, preps)
        if n and rest[k] == 'to' and (k and rest[k - 1] in _RELATION_BEFORE_TO
                                      or _side_of(rest[k + 1:])):
            continue  # 'the block next to the cup', 'the block to the left of the cup'
        if n and k + n < len(rest):
            destination = _phrase(rest[k + n:])
            if destination:
                return rest[:k], destination, ' '.join(rest[k:k + n])
    return rest, None, None


def _side_of(tokens: list[str]) -> bool:
    """Tell whether tokens start with '(the) <direction> of': a place beside something."""
    words = tokens[1:] if tokens[:1] and tokens[0] in _ARTICLES else tokens
    return len(words) > 1 and words[0] in _DIRECTIONS and words[1] == 'of'


def _phrase(tokens: list[str]) -> str | None:
    while tokens and tokens[0] in _CONJUNCTIONS:  # 'the cup and then the fork'
        tokens = tokens[1:]
    words = [t for t in _reorder(_uncolour(tokens)) if t not in _ARTICLES and t != ',']
    if not words or (len(words) == 1 and words[0] in _PRONOUNS):
        return None
    return ' '.join(words)


def _uncolour(tokens: list[str]) -> list[str]:
    """Drop 'colored' after a word: 'red colored block', 'red-coloured block' -> 'red block'."""
    out = []
    for tok in tokens:
        if tok.endswith(_COLOURED_SUFFIXES) and len(tok.rsplit('-', 1)[0]) > 0:
            out.append(tok.rsplit('-', 1)[0])
        elif not (tok in _COLOURED and out and out[-1] not in _ARTICLES):
            out.append(tok)
    return out


def _reorder(tokens: list[str]) -> list[str]:
    """Move a short description after 'that is' before its noun: 'block that is red'."""
    for k in range(1, len(tokens)):
        n = _match(tokens, k, _RELATIVE)
        if not n:
            continue
        head, tail = tokens[:k], tokens[k + n:]
        while tail and tail[0] in _COLOURED:
            tail = tail[1:]  # 'that is colored red'
        if not tail or not any(t not in _ARTICLES for t in head):
            return tokens
        if tail[0] in RELATION_WORDS:
            return head + tail  # 'block that is next to the cup' -> 'block next to the cup'
        if len(tail) <= 2:
            return tail + head
        return tokens
    return tokens


def _split_targets(tokens: list[str]) -> list[str]:
    targets, current = [], []
    for tok in tokens + [',']:
        if tok in _SEPARATORS:
            phrase = _phrase(current)
            if phrase:
                targets.append(phrase)
            current = []
        else:
            current.append(tok)
    return targets


def _merge(text: str, clauses: list[Command]) -> Command:
    verbs = [c.verb for c in clauses if c.verb]
    verb = verbs[0] if verbs else None
    placed = next((c for c in clauses if c.destination), None)
    direction = next((c.direction for c in clauses if c.direction), None)
    if verb == 'pick' and any(c.verb == 'place' and c.destination for c in clauses):
        verb = 'place'  # 'grab X and put it in Y'
    targets = list(dict.fromkeys(t for c in clauses for t in c.targets))
    return Command(text, verb, targets, placed and placed.destination, direction,
                   relation=placed and placed.relation)
