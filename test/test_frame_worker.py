"""BatchWorker: newest frame per camera, batches across cameras, parallel workers in order."""
import threading
import time

import pytest

from clip_ros.nodes.frame_worker import BatchWorker, FrameWorker


class Recorder:
    """A process function that records its batches and can hold them until released."""

    def __init__(self, hold: float = 0.0):
        self.lock = threading.Lock()
        self.batches = []  # (thread name, [(key, item)])
        self.in_flight: set = set()
        self.overlap = []  # keys found in flight twice (must stay empty)
        self.most_at_once = 0
        self.hold = hold
        self.errors = []

    def __call__(self, batch):
        keys = [k for k, _ in batch]
        with self.lock:
            self.overlap += [k for k in keys if k in self.in_flight]
            self.in_flight.update(keys)
            self.batches.append((threading.current_thread().name, batch))
            self.most_at_once = max(self.most_at_once, len(self.in_flight))
        time.sleep(self.hold)
        with self.lock:
            self.in_flight.difference_update(keys)


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_one_worker_batches_every_camera():
    rec = Recorder()
    worker = BatchWorker(['a', 'b', 'c'], rec, rec.errors.append, window=0.5)
    try:
        for key in ('a', 'b', 'c'):
            worker.submit(key, f'{key}0')
        assert _wait(lambda: worker.processed == 3)
        assert [sorted(k for k, _ in b) for _, b in rec.batches] == [['a', 'b', 'c']]
        assert worker.workers == 1
    finally:
        worker.stop()


def test_parallel_workers_keep_each_camera_in_order_and_in_one_batch():
    keys = ['cam0', 'cam1', 'cam2', 'cam3']
    rec = Recorder(hold=0.02)
    worker = BatchWorker(keys, rec, rec.errors.append, window=0.005, workers=2)
    try:
        assert worker.workers == 2
        for n in range(40):
            for key in keys:
                worker.submit(key, n)
            time.sleep(0.004)
        assert _wait(lambda: worker.pending == 0 and not rec.in_flight)
    finally:
        worker.stop()
    assert not rec.errors
    assert rec.overlap == [], 'a camera was in two batches at once'
    assert max(len(b) for _, b in rec.batches) <= 2  # ceil(4 cameras / 2 workers)
    assert rec.most_at_once > 2, 'the two workers never ran at the same time'
    assert len({name for name, _ in rec.batches}) == 2
    for key in keys:
        seen = [item for _, b in rec.batches for k, item in b if k == key]
        assert seen == sorted(seen) and len(set(seen)) == len(seen), key
        assert seen[-1] == 39  # the newest frame of every camera was processed
    # Frames that waited while their camera was busy were replaced, and counted.
    assert worker.processed + worker.dropped == worker.received == 160


def test_a_failing_batch_leaves_the_workers_running():
    calls = []

    def process(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError('bad frame')

    errors = []
    worker = BatchWorker(['a', 'b'], process, errors.append, window=0.0, workers=2)
    try:
        worker.submit('a', 1)
        assert _wait(lambda: errors)
        worker.submit('a', 2)  # 'a' is free again after the failure
        assert _wait(lambda: worker.processed == 2)
    finally:
        worker.stop()
    assert [str(e) for e in errors] == ['bad frame']
    assert calls[-1] == [('a', 2)]


def test_stop_ends_every_worker():
    worker = BatchWorker(['a', 'b', 'c'], lambda batch: None, lambda e: None, 0.0, workers=3)
    threads = list(worker._threads)
    assert worker.stop()
    assert not any(t.is_alive() for t in threads)


def test_stop_says_when_a_frame_outlives_it_and_keeps_its_failure_quiet():
    started, release, errors = threading.Event(), threading.Event(), []

    def slow(item):  # a long inference whose outputs are gone when it ends
        started.set()
        release.wait(10.0)
        raise RuntimeError('publisher destroyed')
    worker = FrameWorker(slow, errors.append)
    worker.submit(1)
    assert started.wait(5.0)
    assert worker.stop(timeout=0.2) is False
    release.set()
    assert _wait(lambda: not any(t.is_alive() for t in worker._threads))
    assert errors == []


def test_frame_worker_keeps_only_the_newest_frame():
    seen, release = [], threading.Event()

    def process(item):
        release.wait(5)
        seen.append(item)

    worker = FrameWorker(process, lambda e: None)
    try:
        worker.submit(1)
        assert _wait(lambda: worker.pending == 0)  # 1 is being processed
        assert not worker.submit(2)
        assert worker.submit(3)  # replaces 2
        release.set()
        assert _wait(lambda: seen == [1, 3])
        assert worker.dropped == 1
    finally:
        worker.stop()


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match='workers must be at least 1'):
        BatchWorker(['a'], lambda batch: None, lambda e: None, 0.0, workers=0)
