"""ament_pep257 docstring conventions over the package sources and tests."""
from pathlib import Path

from ament_pep257.main import main
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ['clip_ros', 'test', 'launch', 'scripts', 'setup.py']


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    paths = [str(ROOT / name) for name in SOURCES if (ROOT / name).exists()]
    rc = main(argv=paths)
    assert rc == 0, 'Found code style errors / warnings'
