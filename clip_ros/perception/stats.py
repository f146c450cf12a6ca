"""Frame-rate, latency and drop statistics for a node's diagnostics, with the level decision."""
import collections
from dataclasses import dataclass, field
import math
import threading
import time

import numpy as np

OK, WARN, ERROR = 0, 1, 2  # the diagnostic_msgs/DiagnosticStatus levels


@dataclass
class HealthLimits:
    """When the statistics stop being OK."""

    silent_after: float = 5.0  # seconds without an input frame while active -> WARN
    max_drop_ratio: float = 0.95  # frames replaced before inference / received, over the window
    min_frames_for_drops: int = 20  # fewer frames in the window never warn about drops


@dataclass
class Snapshot:
    """Statistics over the last window, as the diagnostics report them."""

    input_rate: float  # Hz
    processed_rate: float  # Hz
    received: int  # totals since the last reset
    processed: int
    dropped: int
    window_frames: int  # input frames within the window
    drop_ratio: float  # dropped / received within the window
    inference_ms: tuple  # (p50, p99) of the processing time, NaN before the first frame
    latency_ms: tuple  # (p50, p99) from receipt to results published
    since_input: float  # seconds since the last frame, or since the reset if none yet
    busy: float  # seconds spent processing since the last reset
    last_error: str
    rejected: int = 0  # inputs refused with a reason since the last reset
    window_rejected: int = 0  # ... within the window
    last_rejected: str = ''  # the newest reason
    failed: int = 0  # inference runs (frames or batches) that raised since the last reset
    window_failed: int = 0  # ... within the window
    level: int = OK
    reasons: list = field(default_factory=list)


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple:
    """Return the Wilson score interval (low, high) of a success rate (95% for z = 1.96)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (
        1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, trials: int, z: float = 1.96) -> dict:
    """Return {'k', 'n', 'rate', 'low', 'high'}: a success rate with its Wilson interval."""
    low, high = wilson_interval(successes, trials, z)
    rate = successes / trials if trials > 0 else float('nan')
    return {'k': int(successes), 'n': int(trials), 'rate': rate, 'low': low, 'high': high}


def mean_interval(values, level: float = 0.95) -> dict:
    """
    Return {'n', 'mean', 'low', 'high'}: a mean with its Student-t interval.

    One value says nothing about the spread: its bounds are NaN (a normal interval there
    would be zero-wide, and for a few values too narrow).
    """
    from scipy.stats import t
    values = np.asarray(list(values), dtype=np.float64)
    n = len(values)
    if not n:
        return {'n': 0, 'mean': float('nan'), 'low': float('nan'), 'high': float('nan')}
    mean = float(values.mean())
    if n == 1:
        return {'n': 1, 'mean': mean, 'low': float('nan'), 'high': float('nan')}
    half = float(t.ppf(0.5 + level / 2, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return {'n': n, 'mean': mean, 'low': mean - half, 'high': mean + half}


def percentiles(values, qs=(50, 99)) -> tuple:
    """Return the percentiles `qs` of `values`, NaN for each when empty."""
    if not len(values):
        return tuple(float('nan') for _ in qs)
    return tuple(float(v) for v in np.percentile(np.asarray(values, dtype=np.float64), qs))


class FrameStats:
    """
    Count frames in, frames processed and frames dropped, and keep recent timings.

    Rates and the drop ratio cover the last `window` seconds; percentiles cover the last
    `samples` processed frames. Thread-safe: inputs arrive on executor threads while results
    come from the inference thread.
    """

    def __init__(self, window: float = 10.0, samples: int = 1000, clock=time.monotonic):
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._inputs = collections.deque()  # (time, dropped_one)
        self._outputs = collections.deque()  # time
        self._inference = collections.deque(maxlen=samples)  # seconds
        self._latency = collections.deque(maxlen=samples)  # seconds
        self._rejects = collections.deque()  # time of each refused input
        self._failures = collections.deque()  # time of each failed inference run
        self.reset()

    def reset(self) -> None:
        """Forget all counts and timings (a new configure or activate starts afresh)."""
        with self._lock:
            self._inputs.clear()
            self._outputs.clear()
            self._inference.clear()
            self._latency.clear()
            self._rejects.clear()
            self._failures.clear()
            self.received = self.processed = self.dropped = self.rejected = self.failed = 0
            self.last_rejected = ''
            self.busy = 0.0
            self._started = self._clock()
            self._last_input = None
            self.last_error = ''

    def on_input(self, dropped: bool = False) -> None:
        """Count an input frame; `dropped` when it replaced one that was never processed."""
        now = self._clock()
        with self._lock:
            self.received += 1
            self.dropped += int(dropped)
            self._last_input = now
            self._inputs.append((now, dropped))
            self._trim(now)

    def on_processed(self, inference: float, latency: float) -> None:
        """Record a processed frame: its processing time and receipt-to-publish time (s)."""
        now = self._clock()
        with self._lock:
            self.processed += 1
            self.busy += inference
            self._outputs.append(now)
            self._inference.append(inference)
            self._latency.append(latency)
            self._trim(now)

    def on_rejected(self, reason: str) -> None:
        """Count an input refused for `reason` (a bad frame, pose or command)."""
        now = self._clock()
        with self._lock:
            self.rejected += 1
            self.last_rejected = reason
            self._rejects.append(now)
            self._trim(now)

    def on_error(self, message: str) -> None:
        """Remember the newest error message."""
        with self._lock:
            self.last_error = message

    def on_failed(self, message: str) -> None:
        """Count an inference run (a frame or a batch) that raised `message`."""
        now = self._clock()
        with self._lock:
            self.failed += 1
            self.last_error = message
            self._failures.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        start = now - self._window
        while self._inputs and self._inputs[0][0] < start:
            self._inputs.popleft()
        while self._outputs and self._outputs[0] < start:
            self._outputs.popleft()
        while self._rejects and self._rejects[0] < start:
            self._rejects.popleft()
        while self._failures and self._failures[0] < start:
            self._failures.popleft()

    def snapshot(self) -> Snapshot:
        """Return the current statistics (level OK; see `assess`)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            inputs = len(self._inputs)
            dropped = sum(1 for _, d in self._inputs if d)
            span = self._window
            return Snapshot(
                input_rate=inputs / span, processed_rate=len(self._outputs) / span,
                received=self.received, processed=self.processed, dropped=self.dropped,
                window_frames=inputs, drop_ratio=dropped / inputs if inputs else 0.0,
                inference_ms=tuple(v * 1e3 for v in percentiles(self._inference)),
                latency_ms=tuple(v * 1e3 for v in percentiles(self._latency)),
                since_input=now - (self._started if self._last_input is None
                                   else self._last_input),
                busy=self.busy,
                last_error=self.last_error, rejected=self.rejected,
                window_rejected=len(self._rejects), last_rejected=self.last_rejected,
                failed=self.failed, window_failed=len(self._failures))


def assess(snapshot: Snapshot, limits: HealthLimits, active: bool, load_error: str = '',
           qos_hint: str = '') -> Snapshot:
    """
    Set `snapshot.level` and `snapshot.reasons` and return it.

    ERROR when the model failed to load; WARN while active when the input is silent, frames
    are mostly dropped, or inputs were refused or inference failed within the window, or a
    QoS hint is pending; otherwise OK.
    """
    reasons, level = [], OK
    if load_error:
        reasons.append(f'model failed to load: {load_error}')
        level = ERROR
    if active and snapshot.since_input > limits.silent_after:
        since = ' since activation' if snapshot.received == 0 else ''
        reasons.append(f'no input frame for {snapshot.since_input:.1f} s{since}')
        level = max(level, WARN)
    enough = snapshot.window_frames >= limits.min_frames_for_drops
    if active and enough and snapshot.drop_ratio > limits.max_drop_ratio:
        reasons.append(f'{snapshot.drop_ratio:.0%} of input frames dropped')
        level = max(level, WARN)
    if active and snapshot.window_rejected:
        # Refused inputs are logged once per throttle period; here they stay visible.
        reasons.append(f'{snapshot.window_rejected} inputs refused recently (last: '
                       f'{snapshot.last_rejected})')
        level = max(level, WARN)
    if active and snapshot.window_failed:
        # A failed run still counts as processed: without this, a model failing on every
        # frame would read OK.
        reasons.append(f'{snapshot.window_failed} inference runs failed recently (last: '
                       f'{snapshot.last_error})')
        level = max(level, WARN)
    if qos_hint:
        reasons.append(qos_hint)
        level = max(level, WARN)
    snapshot.level, snapshot.reasons = level, reasons
    return snapshot
