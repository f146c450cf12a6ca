"""The benchmark times the reference and every backend on tiny models and times decoding."""
import json

import pytest

from clip_ros.tools.benchmark import main

pytest.importorskip('onnxruntime')
pytest.importorskip('openvino')


def test_benchmark_writes_rows(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    rc = main(['--clip-arch', 'tiny', '--clipseg', 'tiny', '--phrases', '1', '3',
               '--repeats', '1', '--size', '96x64', '--threshold', '0.0', '--json', str(out),
               '--cache-dir', str(tmp_path / 'onnx'),
               '--backends', 'onnxruntime', 'openvino', 'openvino-f32'])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = report['grounding']
    assert [r['phrases'] for r in rows] == [1, 3]
    for row in rows:
        # Threshold 0 makes each phrase one full-frame instance, capped identically in all paths.
        assert row['instances'] == row['phrases']
        assert list(row['backends']) == ['torch', 'onnxruntime', 'openvino', 'openvino-f32']
        for name, backend in row['backends'].items():
            assert backend['ms'] > 0 and backend['detections'] >= 1
            assert abs(backend['ratio'] - row['reference_ms'] / backend['ms']) < 1e-9
        # f32 graphs give torch's detections; bf16 (openvino's default here) may round a far
        # pixel's probability to 0 and split a full-frame component.
        for name in ('torch', 'onnxruntime', 'openvino-f32'):
            assert row['backends'][name]['same_detections']
            assert row['backends'][name]['detections'] == row['backends']['torch']['detections']
            assert row['backends'][name]['max_score_diff'] <= 1e-4
        assert row['best_ratio'] == max(b['ratio'] for b in row['backends'].values())
        assert row['ours_ms'] == row['backends']['torch']['ms']
    printed = capsys.readouterr().out
    assert '| 3 | 3 |' in printed and '| compressed jpeg |' in printed
    assert 'openvino-f32 ms (ratio)' in printed
    raw, jpeg, png = report['decoding']
    assert raw['bytes'] == 96 * 64 * 3 and 0 < jpeg['bytes'] < raw['bytes']
    assert jpeg['decode_ms'] > 0 and png['decode_ms'] > 0
