"""
Many cameras, one model: a newest-frame slot per camera, batched through one worker thread.

grounding_node with `cameras` set keeps a Camera per entry (its own topics, Tracker and
FrameStats) and one BatchWorker. The worker takes the newest frame of every camera that has
one, waiting at most `batch_window` seconds after the first for the cameras that sent frames
recently, and hands them to the model as one batch. A camera with no new frame is simply not
in the batch, so a slow or silent camera never stalls the others.
"""
import threading
import time
from typing import Any, Callable

from clip_ros.nodes.common import string_list
from clip_ros.perception.stats import FrameStats

# A camera silent for this long is not waited for when a batch forms.
RECENT_SEC = 1.0


def camera_names(node, value) -> list[str]:
    """
    Return the `cameras` parameter as a list of namespaces; raise ValueError with the reason.

    Unset (None) means the node's own single camera and returns []. An explicitly empty
    list, an empty entry, or one camera given twice (after resolving its image topic, so
    'cam' and '/<node namespace>/cam' are the same camera) is refused.
    """
    if value is None:
        return []
    names = [name.strip().rstrip('/') for name in string_list('cameras', list(value))]
    if not names:
        raise ValueError('cameras is an empty list: name at least one camera namespace, or '
                         "leave it unset for the node's own image topic")
    seen = {}
    for name in names:
        if not name:
            raise ValueError(f'cameras {list(value)} has an empty entry')
        try:
            topic = node.resolve_topic_name(f'{name}/image')
        except Exception as e:  # noqa: B902 - rclpy raises its own types for invalid names
            raise ValueError(f'cameras entry {name!r} is not a valid namespace: {e}') from e
        if topic in seen:
            raise ValueError(f'camera {name!r} is given twice in cameras (as {seen[topic]!r} '
                             f'and {name!r}, both {topic})')
        seen[topic] = name
    return names


class Camera:
    """One camera's topics, outputs, tracker and statistics ('' = the node's own topics)."""

    def __init__(self, name: str, tracker):
        self.name = name
        self.tracker = tracker
        self.stats = FrameStats()
        self.pubs = {}  # output topic base name -> lifecycle publisher

    def topic(self, base: str) -> str:
        """Return the camera's topic `base` (relative, so namespaces and remapping apply)."""
        return f'{self.name}/{base}' if self.name else base


class BatchWorker:
    """
    Run `process(batch)` on a thread with the newest frame of every camera that has one.

    `batch` is a list of (key, item) in the order of `keys`. Each key has a one-item slot: a
    frame that arrives while the model is busy replaces the waiting one of its camera
    (counted in `dropped`). Once a frame waits, the worker waits at most `window` seconds for
    the other cameras that sent a frame within RECENT_SEC, then runs whatever is there.
    Same interface as FrameWorker, except that `submit` takes the key.
    """

    def __init__(self, keys: list, process: Callable[[list], None],
                 on_error: Callable[[Exception], None], window: float,
                 name: str = 'batch_worker'):
        self._keys = list(keys)
        self._process = process
        self._on_error = on_error
        self._window = float(window)
        self._cond = threading.Condition()
        self._slots = dict.fromkeys(self._keys)
        self._last = dict.fromkeys(self._keys, float('-inf'))
        self._stopped = False
        self.received = self.dropped = self.processed = self.batches = 0
        self._reported = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, key, item: Any) -> bool:
        """Store `item` as `key`'s newest frame; return whether a waiting frame was dropped."""
        with self._cond:
            replaced = self._slots[key] is not None
            self.dropped += int(replaced)
            self._slots[key] = item
            self._last[key] = time.monotonic()
            self.received += 1
            self._cond.notify()
        return replaced

    @property
    def pending(self) -> int:
        """Return how many frames wait for the worker (at most one per camera)."""
        with self._cond:
            return sum(item is not None for item in self._slots.values())

    def clear(self) -> None:
        """Drop the waiting frames (the batch in progress finishes)."""
        with self._cond:
            self._slots = dict.fromkeys(self._keys)

    def dropped_report(self) -> str | None:
        """Describe the frames dropped since the last call, or return None if there were none."""
        with self._cond:
            new, self._reported = self.dropped - self._reported, self.dropped
        if not new:
            return None
        return (f'dropped {new} frames while busy (only the newest frame per camera is '
                f'processed); {self.processed} processed in {self.batches} batches of '
                f'{self.received} received')

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker after the batch in progress, if any."""
        with self._cond:
            self._stopped = True
            self._slots = dict.fromkeys(self._keys)
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _complete(self, now: float) -> bool:
        """Return whether every camera that sent a frame recently has one waiting."""
        return all(item is not None or now - self._last[key] > RECENT_SEC
                   for key, item in self._slots.items())

    def _take(self) -> list | None:
        """Wait for a batch; return it, or None once stopped."""
        with self._cond:
            while not self._stopped and not any(v is not None for v in self._slots.values()):
                self._cond.wait()
            deadline = time.monotonic() + self._window
            while not self._stopped and not self._complete(time.monotonic()):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._stopped:
                return None
            batch = [(key, self._slots[key]) for key in self._keys
                     if self._slots[key] is not None]
            for key, _ in batch:
                self._slots[key] = None
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                self._process(batch)
            except Exception as e:  # noqa: B902 - one bad batch must not end the worker
                self._on_error(e)
            self.processed += len(batch)
            self.batches += 1
