"""Lexicon: synonyms onto a closed model's words, unknown words and two-object phrases."""
import json
import shutil

import pytest

from clip_ros.learning.tabletop_recipe import DEFAULT_CONFIG
from clip_ros.perception import tabletop_model as tabletop
from clip_ros.perception.loading import load_clip
from clip_ros.perception.registry import ModelLoadError
from clip_ros.perception.vocabulary import FILLERS, Lexicon

BUNDLED = json.loads((tabletop.BUNDLED_DIR / tabletop.CONFIG_FILE).read_text())['clip_ros']


@pytest.fixture(scope='module')
def lexicon():
    return Lexicon(BUNDLED['vocabulary'], BUNDLED['synonyms'])


@pytest.mark.parametrize('phrase,text', [
    ('red block', 'red block'),
    ('Red Cube!', 'red block'),
    ('the blue sphere', 'blue ball'),
    ('green marble', 'green ball'),
    ('yellow can', 'yellow cylinder'),
    ('tin can', 'cylinder'),
    ('the white dish', 'white bowl'),
    ('violet box', 'purple block'),
    ('the violet-coloured box', 'purple block'),
    ('crimson brick', 'red block'),
    ('block red', 'red block'),  # word order of the vocabulary name
    ('BLUE-BALL', 'blue ball'),
    ('the blocks', 'block'),
    ('boxes', 'block'),
    ('spheres', 'ball'),
    ('the red one', 'red'),
    ('black object', 'black'),
    ('orange thing', 'orange'),  # a model word is never rewritten
    ('\uff32\uff25\uff24 block', 'red block'),  # full-width letters (NFKC)
])
def test_maps_onto_model_words(lexicon, phrase, text):
    assert lexicon.canonical(phrase) == (text, None)


@pytest.mark.parametrize('phrase,reason', [
    ('the turquoise block', 'unknown word: turquoise'),
    ('grey ball', 'unknown word: grey'),
    ('small blue block', 'unknown word: small'),
    ('block next to cup', 'unknown word: next'),
    ('red mug', 'unknown word: mug'),
    ('red block and blue ball', 'two objects: red block, blue ball'),
    ('red cube, blue sphere', 'two objects: red block, blue ball'),
    ('red block blue ball', 'two objects: red block, blue ball'),
    ('block or bowl', 'two objects: block, bowl'),
    ('the', 'empty phrase'),
    ('', 'empty phrase'),
    ('?!', 'empty phrase'),
    ('red green blue block', 'conflicting words: red, green'),
    ('blue red ball', 'conflicting words: blue, red'),
])
def test_reasons(lexicon, phrase, reason):
    assert lexicon.canonical(phrase) == (phrase, reason)


def test_every_vocabulary_name_is_itself(lexicon):
    assert all(lexicon.canonical(name) == (name, None) for name in BUNDLED['vocabulary'])


def test_open_model_keeps_the_users_words():
    lexicon = Lexicon((), {'cube': 'block'})
    assert lexicon.is_open
    for phrase in ('The Turquoise cube!', 'red block and blue ball', 'small mug', '红色方块'):
        assert lexicon.canonical(phrase) == (phrase, None)
    for phrase in ('', '   ', '?!'):  # nothing to ground
        assert lexicon.canonical(phrase) == (phrase, 'empty phrase')
    # Longer than the text towers read (75 ids between start and end): refused, not cut.
    assert lexicon.canonical(' '.join(['red'] * 75)) == (' '.join(['red'] * 75), None)
    long = ' '.join(['red'] * 76)
    assert lexicon.canonical(long) == (long, 'phrase too long: 76 tokens, the text encoder '
                                       'reads 75')


def test_a_repeated_word_counts_once(lexicon):
    assert lexicon.canonical('red block red') == ('red block', None)


def test_synonym_onto_unknown_word_is_refused():
    with pytest.raises(ValueError, match='not made of'):
        Lexicon(['red block'], {'cube': 'box'})
    with pytest.raises(ValueError, match='strings'):
        Lexicon(['red block'], {'cube': 3})


def test_multi_word_synonym_and_model_word_keys():
    lexicon = Lexicon(['red block', 'blue ball'], {'play ball': 'ball', 'red': 'blue'})
    assert lexicon.canonical('the red play ball') == ('red ball', None)
    assert lexicon.canonical('red') == ('red', None)  # a model word is not rewritten


def test_fillers_are_few_and_not_model_words():
    assert len(FILLERS) < 25
    words = {w for name in BUNDLED['vocabulary'] for w in name.split()}
    assert not FILLERS & words and not FILLERS & set(BUNDLED['synonyms'])


def test_synonyms_table_is_data_kept_on_retraining():
    # A retrained model writes DEFAULT_CONFIG: it keeps the bundled table.
    assert DEFAULT_CONFIG['clip_ros']['synonyms'] == BUNDLED['synonyms']
    assert {'cube', 'sphere', 'violet'} <= set(BUNDLED['synonyms'])
    assert 'turquoise' not in BUNDLED['synonyms']


def test_handle_carries_synonyms():
    clip = load_clip('tabletop', device='cpu')
    assert clip.synonyms == BUNDLED['synonyms']
    assert Lexicon(clip.vocabulary, clip.synonyms).canonical('a blue cube') == ('blue block', None)
    # A pretrained (open) model has no table.
    tiny = load_clip('tiny', 'random', device='cpu')
    assert tiny.synonyms == {} and tiny.vocabulary == ()


@pytest.mark.parametrize('synonyms', [['cube'], {'cube': 'box'}, {'cube': 1}])
def test_bad_synonyms_in_config_refused_at_load(tmp_path, synonyms):
    target = tmp_path / 'tabletop'
    shutil.copytree(tabletop.BUNDLED_DIR, target)
    config = json.loads((target / tabletop.CONFIG_FILE).read_text())
    config['clip_ros']['synonyms'] = synonyms
    (target / tabletop.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match='synonym'):
        load_clip('tabletop', str(target), device='cpu')


def test_synonym_eval_on_a_val_scene():
    from clip_ros.tools.synonym_eval import format_table, run
    records, summary = run('val', 2)
    assert {'canonical', 'cube', 'sphere', 'unknown'} <= {r['word'] for r in records}
    # Every synonym query maps onto the object's own name; every unknown word is named.
    assert all(r['mapped'] == r['name'] for r in records if r['word'] != 'unknown')
    assert summary['unknown']['named_unknown'] == 1.0
    # Regression floor: mapped synonyms ground as well as the names themselves.
    assert summary['synonyms']['mapped_accuracy'] >= 0.9
    assert summary['synonyms']['mapped_accuracy'] >= summary['synonyms']['typed_accuracy']
    assert 'SYNONYMS' in format_table(summary)
