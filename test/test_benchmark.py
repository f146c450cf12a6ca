"""The benchmark times the reference and every backend on tiny models and times decoding."""
import json

import pytest

from clip_ros.perception.geometry import Detection
from clip_ros.perception.grounding import GroundingResult
from clip_ros.tools.benchmark import agreement, main, p50_p90, score_tol


def test_benchmark_writes_rows(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    pytest.importorskip('openvino')
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
            assert row['backends'][name]['parity']
        assert row['backends']['openvino']['score_tol'] == 0.02
        fastest = [n for n, b in row['backends'].items() if b['parity']]
        assert row['best_parity_backend'] in fastest and row['best_parity_ratio'] == max(
            row['backends'][n]['ratio'] for n in fastest)
        assert row['best_ratio'] == max(b['ratio'] for b in row['backends'].values())
        assert row['ours_ms'] == row['backends']['torch']['ms']
    printed = capsys.readouterr().out
    assert '| 3 | 3 |' in printed and '| compressed jpeg |' in printed
    assert 'openvino-f32 ms (ratio)' in printed
    raw, jpeg, png = report['decoding']
    assert raw['bytes'] == 96 * 64 * 3 and 0 < jpeg['bytes'] < raw['bytes']
    assert jpeg['decode_ms'] > 0 and png['decode_ms'] > 0


def _result(*detections) -> GroundingResult:
    found = [Detection(i, phrase, score, box, 100, (0.0, 0.0), 0.5)
             for i, (phrase, score, box) in enumerate(detections)]
    return GroundingResult([d.phrase for d in found], found, None, None)


def test_agreement_matches_detections_in_any_order():
    a, b = ('red ball', 0.2390, (0, 0, 10, 10)), ('blue block', 0.2381, (0, 0, 10, 10))
    swapped = agreement(_result(a, b), _result(('blue block', 0.2395, b[2]),
                                               ('red ball', 0.2370, a[2])), tol=0.003)
    assert swapped['same_detections'] and swapped['parity']
    assert abs(swapped['max_score_diff'] - 0.0020) < 1e-9
    assert agreement(_result(a, b), _result(a, b), tol=0.0)['parity']  # identical
    over = agreement(_result(a), _result(('red ball', 0.30, a[2])), tol=0.02)
    assert over['same_detections'] and not over['parity']  # same box, score beyond tolerance
    moved = agreement(_result(a), _result(('red ball', 0.2390, (0, 0, 10, 20))))
    assert not moved['same_detections'] and not moved['parity']
    extra = agreement(_result(a), _result(a, b))
    assert not extra['same_detections']
    assert agreement(_result(), _result())['parity']


def test_p90_of_few_repeats_is_not_the_slowest_call():
    # 10 and 20 repeats: the slowest call is the 95th and 97.5th percentile, not the 90th.
    assert p50_p90([float(v) for v in range(10, 0, -1)]) == pytest.approx((5.5, 9.1))
    assert p50_p90([float(v) for v in range(1, 21)]) == pytest.approx((10.5, 18.1))
    assert p50_p90([3.0]) == (3.0, 3.0)


def test_half_precision_holds_every_path_to_the_fp16_tolerance():
    assert score_tol('torch-eager') == score_tol('onnxruntime') == 1e-4
    assert score_tol('openvino') == score_tol('openvino-mixed') == 0.02
    # fp16 torch (the CUDA run): eager and padded graphs, or f32 graphs, round differently.
    for name in ('torch-eager', 'onnxruntime', 'openvino', 'openvino-mixed'):
        assert score_tol(name, half=True) == 0.02
