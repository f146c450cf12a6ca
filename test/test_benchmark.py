"""The benchmark runs both paths on tiny models (a row per phrase count) and times decoding."""
import json

from clip_ros.tools.benchmark import main


def test_benchmark_writes_rows(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    rc = main(['--clip-arch', 'tiny', '--clipseg', 'tiny', '--phrases', '1', '3',
               '--repeats', '1', '--size', '96x64', '--threshold', '0.0', '--json', str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = report['grounding']
    assert [r['phrases'] for r in rows] == [1, 3]
    for row in rows:
        # Threshold 0 makes each phrase one full-frame instance, capped identically in both paths.
        assert row['instances'] == row['phrases']
        assert row['reference_ms'] > 0 and row['ours_ms'] > 0
        assert abs(row['ratio'] - row['reference_ms'] / row['ours_ms']) < 1e-9
    printed = capsys.readouterr().out
    assert '| 3 | 3 |' in printed and '| compressed jpeg |' in printed
    raw, jpeg, png = report['decoding']
    assert raw['bytes'] == 96 * 64 * 3 and 0 < jpeg['bytes'] < raw['bytes']
    assert jpeg['decode_ms'] > 0 and png['decode_ms'] > 0
