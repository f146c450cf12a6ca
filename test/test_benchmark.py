"""The benchmark command runs both paths on tiny models and reports one row per phrase count."""
import json

from clip_ros.tools.benchmark import main


def test_benchmark_writes_rows(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    rc = main(['--clip-arch', 'tiny', '--clipseg', 'tiny', '--phrases', '1', '3',
               '--repeats', '1', '--size', '96x64', '--threshold', '0.0', '--json', str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    assert [r['phrases'] for r in rows] == [1, 3]
    for row in rows:
        # Threshold 0 makes each phrase one full-frame instance, capped identically in both paths.
        assert row['instances'] == row['phrases']
        assert row['reference_ms'] > 0 and row['ours_ms'] > 0
        assert abs(row['ratio'] - row['reference_ms'] / row['ours_ms']) < 1e-9
    assert '| 3 | 3 |' in capsys.readouterr().out
