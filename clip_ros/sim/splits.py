"""Dataset splits: disjoint seed ranges, and the colour-shape combinations train never sees."""
SPLITS = {'train': 0, 'val': 100_000, 'test': 200_000}  # first seed of each split
SPLIT_SIZE = 100_000
HELD_OUT = (('purple', 'cylinder'), ('orange', 'ball'), ('white', 'bowl'), ('green', 'block'))


def split_seeds(split: str, count: int, start: int = 0) -> range:
    """
    Return the seeds of scenes `start` .. `start + count - 1` of `split`.

    Raises
    ------
    ValueError
        For an unknown split or a range beyond the split's SPLIT_SIZE seeds.

    """
    if split not in SPLITS:
        raise ValueError(f'unknown split {split!r}; choose one of {sorted(SPLITS)}')
    if count < 0 or start < 0 or start + count > SPLIT_SIZE:
        raise ValueError(f'scenes {start}..{start + count} outside 0..{SPLIT_SIZE} of {split!r}')
    return range(SPLITS[split] + start, SPLITS[split] + start + count)


def split_exclude(split: str) -> tuple:
    """Return the colour-shape combinations a split never contains."""
    return HELD_OUT if split == 'train' else ()
