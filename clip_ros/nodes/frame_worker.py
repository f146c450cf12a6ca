"""Newest-frame slots (one per camera) with a worker thread, and per-reason throttled logging."""
import collections
import threading
import time
from typing import Any, Callable


# A camera silent for this long is not waited for when a batch forms.
RECENT_SEC = 1.0


class BatchWorker:
    """
    Run `process(batch)` on worker threads with the newest frame of the cameras that have one.

    `batch` is a list of (key, item), oldest frame first. Each key has a one-item slot: a
    frame that arrives while the model is busy replaces the waiting one of its camera
    (counted in `dropped`). Once a frame waits, a worker waits at most `window` seconds for
    the other cameras that sent a frame within RECENT_SEC (or until it has `max_batch`
    frames), then runs whatever is there. With several `workers`, a camera is in at most
    one batch at a time, so each camera's frames are processed and published in order, and
    a batch holds at most ceil(cameras / workers) frames so every worker gets some.
    Same interface as FrameWorker, except that `submit` takes the key.
    """

    def __init__(self, keys: list, process: Callable[[list], None],
                 on_error: Callable[[Exception], None], window: float,
                 name: str = 'batch_worker', workers: int = 1):
        if workers < 1:
            raise ValueError(f'workers must be at least 1, got {workers}')
        self._keys = list(keys)
        self._process = process
        self._on_error = on_error
        self._window = float(window)
        self._max_batch = -(-len(self._keys) // workers)
        self._cond = threading.Condition()
        self._slots = dict.fromkeys(self._keys)
        self._last = dict.fromkeys(self._keys, float('-inf'))
        self._busy: set = set()  # keys in a batch being processed
        self._stopped = False
        self.received = self.dropped = self.processed = self.batches = 0
        self._reported = 0
        self._threads = [
            threading.Thread(target=self._run, name=name if workers == 1 else f'{name}_{k}',
                             daemon=True) for k in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        """Return the number of worker threads."""
        return len(self._threads)

    def submit(self, key, item: Any) -> bool:
        """Store `item` as `key`'s newest frame; return whether a waiting frame was dropped."""
        with self._cond:
            replaced = self._slots[key] is not None
            self.dropped += int(replaced)
            self._slots[key] = item
            self._last[key] = time.monotonic()
            self.received += 1
            self._cond.notify_all()
        return replaced

    @property
    def pending(self) -> int:
        """Return how many frames wait for the worker (at most one per camera)."""
        with self._cond:
            return sum(item is not None for item in self._slots.values())

    def clear(self) -> None:
        """Drop the waiting frames (the batches in progress finish)."""
        with self._cond:
            self._slots = dict.fromkeys(self._keys)

    def dropped_report(self) -> str | None:
        """Describe the frames dropped since the last call, or return None if there were none."""
        with self._cond:
            new, self._reported = self.dropped - self._reported, self.dropped
        if not new:
            return None
        if len(self._keys) == 1:
            return (f'dropped {new} frames while busy (only the newest frame is processed); '
                    f'{self.processed} processed of {self.received} received')
        return (f'dropped {new} frames while busy (only the newest frame per camera is '
                f'processed); {self.processed} processed in {self.batches} batches of '
                f'{self.received} received')

    def stop(self, timeout: float = 5.0) -> bool:
        """
        Stop the workers after the batches in progress, if any; return whether all ended.

        A batch still running after `timeout` finishes on its own; a failure it meets then
        (its node's outputs are gone) is not reported.
        """
        with self._cond:
            self._stopped = True
            self._slots = dict.fromkeys(self._keys)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if threading.current_thread() is not thread:
                thread.join(max(deadline - time.monotonic(), 0.0))
        return not any(t.is_alive() for t in self._threads if t is not threading.current_thread())

    def _ready(self) -> list:
        """Return the keys with a waiting frame that no batch holds, oldest frame first."""
        keys = [k for k in self._keys if self._slots[k] is not None and k not in self._busy]
        return sorted(keys, key=self._last.__getitem__)

    def _complete(self, now: float) -> bool:
        """Return whether every free camera that sent a frame recently has one waiting."""
        return all(self._slots[key] is not None or now - self._last[key] > RECENT_SEC
                   for key in self._keys if key not in self._busy)

    def _take(self) -> list | None:
        """Wait for a batch; return it, or None once stopped."""
        with self._cond:
            while True:
                while not self._stopped and not self._ready():
                    self._cond.wait()
                deadline = time.monotonic() + self._window
                while (not self._stopped and len(self._ready()) < self._max_batch
                       and not self._complete(time.monotonic())):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._stopped:
                    return None
                keys = self._ready()[:self._max_batch]
                if keys:  # else another worker took them while this one waited
                    break
            batch = [(key, self._slots[key]) for key in keys]
            for key in keys:
                self._slots[key] = None
                self._busy.add(key)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._process(batch)
            except Exception as e:  # noqa: B902 - one bad batch must not end the worker
                if not self._stopped:  # after stop, the node that would hear it is gone
                    self._on_error(e)
            with self._cond:
                self._busy.difference_update(key for key, _ in batch)
                self.processed += len(batch)
                self.batches += 1
                self._cond.notify_all()  # its cameras' waiting frames are free to take


class FrameWorker(BatchWorker):
    """
    Run `process` on the newest submitted item in a dedicated thread (one camera).

    The slot holds one item: a frame that arrives while the model is busy replaces the
    waiting one (counted in `dropped`), so latency stays at one inference and no backlog
    builds up. A thread is used rather than a guard condition in a callback group because
    rclpy drops a guard-condition trigger that fires while its group is busy.
    """

    def __init__(self, process: Callable[[Any], None], on_error: Callable[[Exception], None],
                 name: str = 'frame_worker'):
        super().__init__([None], lambda batch: process(batch[0][1]), on_error, 0.0, name)

    def submit(self, item: Any) -> bool:
        """Store `item` as the newest frame and wake the worker; return whether one was dropped."""
        return super().submit(None, item)


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
