"""Newest-frame slot with a worker thread, and per-reason throttled logging."""
import threading
import time
from typing import Any, Callable


class FrameWorker:
    """
    Run `process` on the newest submitted item in a dedicated thread.

    The slot holds one item: a frame that arrives while the model is busy replaces the
    waiting one (counted in `dropped`), so latency stays at one inference and no backlog
    builds up. A thread is used rather than a guard condition in a callback group because
    rclpy drops a guard-condition trigger that fires while its group is busy.
    """

    def __init__(self, process: Callable[[Any], None], on_error: Callable[[Exception], None],
                 name: str = 'frame_worker'):
        self._process = process
        self._on_error = on_error
        self._cond = threading.Condition()
        self._item = None
        self._stopped = False
        self.received = 0
        self.dropped = 0
        self.processed = 0
        self._reported = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Any) -> bool:
        """
        Store `item` as the newest frame and wake the worker; never blocks on inference.

        Returns whether a waiting frame was replaced (dropped).
        """
        with self._cond:
            replaced = self._item is not None
            self.dropped += int(replaced)
            self._item = item
            self.received += 1
            self._cond.notify()
        return replaced

    @property
    def pending(self) -> int:
        """Return how many frames wait for the worker: 0 or 1."""
        with self._cond:
            return int(self._item is not None)

    def clear(self) -> None:
        """Drop the waiting frame, if any (the frame in progress finishes)."""
        with self._cond:
            self._item = None

    def dropped_report(self) -> str | None:
        """Describe the frames dropped since the last call, or return None if there were none."""
        with self._cond:
            new, self._reported = self.dropped - self._reported, self.dropped
        if not new:
            return None
        return (f'dropped {new} frames while busy (only the newest frame is processed); '
                f'{self.processed} processed of {self.received} received')

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker after the frame in progress, if any."""
        with self._cond:
            self._stopped = True
            self._item = None
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._item is None and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    return
                item, self._item = self._item, None
            try:
                self._process(item)
            except Exception as e:  # noqa: B902 - one bad frame must not end the worker
                self._on_error(e)
            self.processed += 1


class KeyedThrottle:
    """
    Log at most once per `period` seconds for each reason key.

    rclpy throttles per call site, so one helper logging many reasons would silence all
    but the first; this keeps one clock per reason and reports how many were suppressed.
    """

    def __init__(self, logger, level: str, period: float = 5.0):
        if level not in ('info', 'warning', 'error'):
            raise ValueError(f"level must be 'info', 'warning' or 'error', got {level!r}")
        self._logger = logger
        self._level = level
        self._period = period
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str) -> bool:
        """Log `message` unless `key` was logged within the period; return whether it logged."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message = f'{message} ({suppressed} similar messages suppressed)'
        self._emit(message)
        return True

    def _emit(self, message: str) -> None:
        # rclpy pins a call site to the severity of its first call: one line per level.
        if self._level == 'error':
            self._logger.error(message)
        elif self._level == 'warning':
            self._logger.warning(message)
        else:
            self._logger.info(message)
