"""
Argument types and checks the command-line tools share: a bad value exits 2 with its reason.

Used as `type=` in argparse (a count, a number in a range, a frame size) or called once the
arguments are parsed (`writable`), so nothing fails with a traceback after minutes of work.
"""
import argparse
import math
import os
from pathlib import Path


def count(minimum: int = 0, maximum: int = None):
    """Return an argparse type: an integer of at least `minimum` (and at most `maximum`)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from e
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be at least {minimum}, got {value}')
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f'must be at most {maximum}, got {value}')
        return value
    return parse


def number(low: float = -math.inf, high: float = math.inf, low_open: bool = False):
    """Return an argparse type: a finite float in [low, high] (low excluded when low_open)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from e
        if not math.isfinite(value) or value > high or value < low or \
                (low_open and value == low):
            if math.isinf(high):
                where = f'above {low:g}' if low_open else f'at least {low:g}'
            else:
                where = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f'must be a finite number {where}, got {text}')
        return value
    return parse


def frame_size(text: str) -> tuple:
    """Parse 'WxH' (e.g. '640x480') into (width, height), at least 8x8 (an argparse type)."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f'size must look like 640x480, got {text!r}') from e
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f'size must be at least 8x8, got {text!r}')
    return width, height


def writable(parser: argparse.ArgumentParser, option: str, path, folder: bool = False,
             make_parent: bool = False) -> None:
    """
    Exit 2 (parser.error) unless `path` can be written: a file, or (folder=True) a folder.

    make_parent: the file's folder is made now when it is missing, as a folder is.
    """
    if not path:
        return
    path = Path(path)
    if make_parent:
        writable(parser, option, path.parent, folder=True)
    if folder:  # made now: it will be written to anyway
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            parser.error(f'{option} {path}: cannot create that folder ({e.strerror})')
        if not os.access(path, os.W_OK):
            parser.error(f'{option} {path}: the folder is not writable')
        return
    reason = unwritable_file(option, path)
    if reason:
        parser.error(reason)


def unwritable_file(option: str, path) -> str:
    """Return why the file `path` (given as `option`) cannot be written, or ''."""
    path = Path(path)
    if path.is_dir():
        return f'{option} {path} is a folder; give a file name'
    parent = path.resolve().parent
    if not (parent.is_dir() and os.access(parent, os.W_OK)):
        return f'{option} {path}: folder {parent} does not exist or is not writable'
    return ''
