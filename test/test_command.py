"""Tests for the natural-language command parser."""
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from clip_ros.policy.command import Command, MAX_COMMAND_CHARS, parse_command

CASES = [
    # text, verb, targets, destination, direction
    ('pick up the blue block', 'pick', ['blue block'], None, None),
    ('grab the red ball and put it in the green bowl', 'place', ['red ball'], 'green bowl',
     None),
    ('push the yellow cylinder to the left', 'push', ['yellow cylinder'], None, 'left'),
    ('where is the purple cube?', 'find', ['purple cube'], None, None),
    ('please pick up the small blue block', 'pick', ['small blue block'], None, None),
    ('could you pick up the red ball', 'pick', ['red ball'], None, None),
    ('the blue one', None, ['blue one'], None, None),
    ('pick up the red ball and the blue block', 'pick', ['red ball', 'blue block'], None, None),
    ('Robot, pick the cup up please.', 'pick', ['cup'], None, None),
    ('Kindly fetch the apple, thanks!', 'pick', ['apple'], None, None),
    ('get me a banana', 'pick', ['banana'], None, None),
    ('pick up the block next to the cup', 'pick', ['block next to cup'], None, None),
    ('take the mug to the sink', 'place', ['mug'], 'sink', None),
    ('put the red block to the left of the bowl', 'place', ['red block'], 'bowl', 'left'),
    ('stack the red block on top of the blue block', 'place', ['red block'], 'blue block',
     None),
    ('pick up the cup then place it on the shelf', 'place', ['cup'], 'shelf', None),
    ('put it in the bowl', 'place', [], 'bowl', None),
    ('move the cup left', 'push', ['cup'], None, 'left'),
    ('shove the box a bit to the right', 'push', ['box'], None, 'right'),
    ('push the box into the corner', 'push', ['box'], 'corner', None),
    ('point at the red ball', 'point', ['red ball'], None, None),
    ('move to the table', 'go_to', ['table'], None, None),
    ('go left', 'go_to', [], None, 'left'),
    ('show me the dog', 'find', ['dog'], None, None),
    ('Where\u2019s my phone?', 'find', ['my phone'], None, None),
    ('find the cup, the spoon and the fork', 'find', ['cup', 'spoon', 'fork'], None, None),
    ('red ball, blue block', None, ['red ball', 'blue block'], None, None),
    ('  PICK   UP\tthe  Red-Ball!!  ', 'pick', ['red-ball'], None, None),
    ('', None, [], None, None),
    ('   \n\t ', None, [], None, None),
    ('?!.,;', None, [], None, None),
    ('please', None, [], None, None),
    # Wanting is picking; 'can you see' stays a verb after the polite 'can you'.
    ('I need the red block', 'pick', ['red block'], None, None),
    ('I want the red block', 'pick', ['red block'], None, None),
    ('give me the blue ball', 'pick', ['blue ball'], None, None),
    ('can you get me the green bowl', 'pick', ['green bowl'], None, None),
    ("I'd like the yellow cylinder", 'pick', ['yellow cylinder'], None, None),
    ('could you give me the blue ball please', 'pick', ['blue ball'], None, None),
    ('I need the red block and the blue ball', 'pick', ['red block', 'blue ball'], None, None),
    ('I need you to pick up the red block', 'pick', ['red block'], None, None),
    ('I want to find the cup', 'find', ['cup'], None, None),
    ('can you see the red ball', 'find', ['red ball'], None, None),
    # 'the <shape> that is <colour>' and '<colour> colored <shape>'.
    ('pick the block that is red', 'pick', ['red block'], None, None),
    ("where's the ball that's purple", 'find', ['purple ball'], None, None),
    ('the ball which is dark blue', None, ['dark blue ball'], None, None),
    ('put the block in the bowl that is blue', 'place', ['block'], 'blue bowl', None),
    ('push the block that is red to the left', 'push', ['red block'], None, 'left'),
    ('pick up the block that is next to the cup', 'pick', ['block next to cup'], None, None),
    ("find the cup that's on the left", 'find', ['cup on left'], None, None),
    ('grab the red colored block', 'pick', ['red block'], None, None),
    ('grab the red coloured block', 'pick', ['red block'], None, None),
    ('grab the red-coloured block', 'pick', ['red block'], None, None),
    ('I want the bowl that is colored white', 'pick', ['white bowl'], None, None),
    ('pick up the block that is colored red and put it in the bowl which is blue', 'place',
     ['red block'], 'blue bowl', None),
    ('give me the ball that is red, then put it into the bowl', 'place', ['red ball'], 'bowl',
     None),
    ('the colored block', None, ['colored block'], None, None),
    # A side of something belongs to the object a pick names; alone it is a way to go.
    ('pick up the block to the left of the red ball', 'pick', ['block to left of red ball'],
     None, None),
    ('grab the ball to the right of the bowl', 'pick', ['ball to right of bowl'], None, None),
    ('take the red block to the left', 'place', ['red block'], None, 'left'),
    # 'down' and 'back' belong to the verb; 'then' before a second object is no word of it.
    ('put down the red block', 'place', ['red block'], None, None),
    ('put the red block back in the green bowl', 'place', ['red block'], 'green bowl', None),
    ('put the red block down on the plate', 'place', ['red block'], 'plate', None),
    ('push the cup back', 'push', ['cup'], None, 'backward'),
    ('pick up the red block and then the blue ball', 'pick', ['red block', 'blue ball'], None,
     None),
]


@pytest.mark.parametrize('text,relation', [
    ('put the red block in the green bowl', 'in'),
    ('stack the red block on top of the blue block', 'on top of'),
    ('put the red block next to the blue ball', 'next to'),
    ('move the red block to the left of the blue bowl', 'left of'),
    ('take the mug to the sink', 'to'),
    ('grab the red ball and put it into the green bowl', 'into'),
    ('pick up the red ball', None),
])
def test_the_words_before_the_destination_are_kept(text, relation):
    assert parse_command(text).relation == relation


@pytest.mark.parametrize('text,word', [
    ("don't grab the red block, grab the blue ball", "don't"),
    ('do not pick up the red block', 'not'),
    ('instead of the red block, pick up the blue ball', 'instead'),
    ('pick up every block except the red one', 'except'),
    ('never touch the blue ball', 'never'),
])
def test_a_negation_is_reported(text, word):
    assert parse_command(text).negation == word


@pytest.mark.parametrize('text,verb,targets,destination,direction', CASES)
def test_parse_command(text, verb, targets, destination, direction):
    cmd = parse_command(text)
    assert (cmd.text, cmd.verb, cmd.targets, cmd.destination, cmd.direction) == (
        text, verb, targets, destination, direction)
    assert not cmd.negation


@pytest.mark.parametrize('value', [None, 42, b'pick up the cup', ['pick'], 3.5])
def test_non_str_gives_empty_command(value):
    assert parse_command(value) == Command(text='')


def test_long_input_is_truncated():
    cmd = parse_command('pick up the ' + 'very ' * 5000 + 'red ball')
    # Cut at a word boundary: the last word is whole.
    assert MAX_COMMAND_CHARS - 5 <= len(cmd.text) <= MAX_COMMAND_CHARS
    assert cmd.text.endswith(' very') and cmd.truncated == 12 + 5 * 5000 + 8 - len(cmd.text)
    assert cmd.verb == 'pick'
    assert cmd.targets[0].startswith('very very')


def test_duplicate_targets_are_merged():
    assert parse_command('find the cup and the cup').targets == ['cup']


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_never_raises(text):
    cmd = parse_command(text)
    assert isinstance(cmd.targets, list)
    assert all(isinstance(t, str) and t and t == t.strip() for t in cmd.targets)
    assert cmd.verb is None or isinstance(cmd.verb, str)


@settings(max_examples=20, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_never_raises_on_huge_input(chunk):
    # 10,000+ characters of arbitrary unicode, including NFKC-expanding ones.
    text = (chunk + ' and \ufdfa, ') * (10000 // (len(chunk) + 8) + 1)
    assert len(parse_command(text).text) <= MAX_COMMAND_CHARS
