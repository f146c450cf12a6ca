"""Newest-frame slot with a worker thread, and per-reason throttled logging."""
import collections
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
    Log each distinct reason at most once per `period` seconds.

    rclpy throttles per call site, so one helper logging many reasons would silence all
    but the first. Here the clock is per (key, reason): the reason is the message (or an
    explicit `reason`) cut to MAX_REASON_CHARS, so a repeat of one reason is throttled while a
    different reason under the same key still logs. At most `max_reasons` distinct reasons of
    one key log per period (a flood of varied input cannot flood the log); whatever is
    suppressed is counted, and the count rides on the next line logged for that key.
    """

    MAX_REASON_CHARS = 200
    MAX_MESSAGE_CHARS = 2000
    MAX_SLOTS = 1024  # expired reason clocks are forgotten beyond this many

    def __init__(self, logger, level: str, period: float = 5.0, max_reasons: int = 10):
        if level not in ('info', 'warning', 'error'):
            raise ValueError(f"level must be 'info', 'warning' or 'error', got {level!r}")
        self._logger = logger
        self._level = level
        self._period = period
        self._max_reasons = max_reasons
        self._last: dict[tuple, float] = {}  # (key, reason) -> when it last logged
        self._repeats: dict[tuple, int] = {}  # (key, reason) -> suppressed repeats
        self._logged: dict[str, collections.deque] = {}  # key -> log times within the period
        self._others: dict[str, int] = {}  # key -> suppressed over the max_reasons cap
        self._lock = threading.Lock()
        self.suppressed = 0  # total messages not logged

    def __call__(self, key: str, message: str, reason: str | None = None) -> bool:
        """
        Log `message` unless its reason under `key` logged within the period.

        `reason` defaults to `message`; returns whether it logged.
        """
        slot = (key, (message if reason is None else reason)[:self.MAX_REASON_CHARS])
        now = time.monotonic()
        with self._lock:
            if len(self._last) > self.MAX_SLOTS:
                self._forget(now)
            last = self._last.get(slot)
            if last is not None and now - last < self._period:
                self._repeats[slot] = self._repeats.get(slot, 0) + 1
                self.suppressed += 1
                return False
            logged = self._logged.setdefault(key, collections.deque())
            while logged and now - logged[0] >= self._period:
                logged.popleft()
            if len(logged) >= self._max_reasons:
                self._others[key] = self._others.get(key, 0) + 1
                self.suppressed += 1
                return False
            logged.append(now)
            self._last[slot] = now
            repeats = self._repeats.pop(slot, 0)
            others = self._others.pop(key, 0)
        if len(message) > self.MAX_MESSAGE_CHARS:
            message = f'{message[:self.MAX_MESSAGE_CHARS]}... ({len(message)} characters)'
        notes = [f'{repeats} repeats suppressed'] if repeats else []
        if others:
            notes.append(f'{others} more with other reasons suppressed')
        if notes:
            message = f'{message} ({"; ".join(notes)})'
        self._emit(message)
        return True

    def _forget(self, now: float) -> None:
        """Drop expired reason clocks; their suppressed counts move to the key's count."""
        for slot, last in list(self._last.items()):
            if now - last >= self._period:
                del self._last[slot]
                repeats = self._repeats.pop(slot, 0)
                if repeats:
                    self._others[slot[0]] = self._others.get(slot[0], 0) + repeats

    def _emit(self, message: str) -> None:
        # rclpy pins a call site to the severity of its first call: one line per level.
        if self._level == 'error':
            self._logger.error(message)
        elif self._level == 'warning':
            self._logger.warning(message)
        else:
            self._logger.info(message)
