"""ament_flake8 over the package sources, tests and launch files."""
from pathlib import Path

from ament_flake8.main import main_with_errors
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = Path(__file__).resolve().parent / 'flake8.ini'
SOURCES = ['clip_ros', 'test', 'launch', 'scripts', 'setup.py']


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8():
    paths = [str(ROOT / name) for name in SOURCES if (ROOT / name).exists()]
    rc, errors = main_with_errors(argv=['--config', str(CONFIG), *paths])
    assert rc == 0, f'Found {len(errors)} code style errors / warnings:\n' + '\n'.join(errors)
