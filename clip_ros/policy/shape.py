"""
Shape words: which of the depth-measured shapes (perception.solid_shape) a phrase names.

A lifted object is checked against the shape its phrase names: a purple cylinder that answered
'purple block' is refused by depth, whatever the colour.
"""
import re

from clip_ros.policy.command import RELATION_WORDS

# Geometric shape -> the words that name it (the bundled model's shapes and their synonyms).
SHAPE_WORDS = {
    'block': ('block', 'blocks', 'cube', 'cubes', 'cuboid', 'box', 'brick'),
    'ball': ('ball', 'balls', 'sphere', 'spheres', 'marble', 'orb'),
    'cylinder': ('cylinder', 'cylinders', 'can', 'tin', 'tube', 'canister', 'pillar', 'column'),
    'bowl': ('bowl', 'bowls', 'dish', 'basin'),
}
_WORD_SHAPE = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}


def shape_of(phrase: str) -> str:
    """
    Return the geometric shape a phrase names ('' when none).

    The object is named before any relation that follows it ('the block next to the ball' is
    a block, 'the left cup' a cup): the last shape word before the first relation word that
    comes after a shape word.
    """
    shapes = []
    for word in re.findall(r'[a-z]+', str(phrase).lower()):
        if shapes and word in RELATION_WORDS:
            break
        if word in _WORD_SHAPE:
            shapes.append(_WORD_SHAPE[word])
    return shapes[-1] if shapes else ''
