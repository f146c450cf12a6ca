"""Approximate time matching of several message streams to an anchor stream (no ROS needed)."""
from collections import deque
from threading import Condition
import time


class TimeMatcher:
    """
    Match each anchor message with the closest message of every other stream in time.

    An anchor (e.g. detections) is released, together with one message per other stream whose
    stamp lies within `tolerance` seconds of the anchor's, as soon as all streams have one;
    the nearest stamp wins. Anchors wait at most `max_wait` seconds (newer anchor stamps age
    them out) and each stream keeps its `queue_size` newest messages.

    Parameters
    ----------
    names : sequence of str
        Stream names; the first is the anchor.
    tolerance : float
        Largest stamp difference (s) accepted for a match.
    queue_size : int
        Messages kept per stream.
    max_wait : float
        How far (s) newer anchors may run ahead of a still-unmatched one before it is dropped.
    exact : sequence of str
        Streams made from the anchor's own frame (a grounding's mask beside its detections):
        only the anchor's exact stamp matches. With a tolerance, the previous frame's mask
        would match whenever frames come faster than the tolerance and the right one is late.

    """

    def __init__(self, names, tolerance: float = 0.05, queue_size: int = 10,
                 max_wait: float = 1.0, exact=()):
        names = list(names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f'need at least two distinct stream names, got {names}')
        if not tolerance >= 0:
            raise ValueError(f'tolerance must be >= 0 seconds, got {tolerance}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.names, self.anchor = names, names[0]
        if not set(exact) <= set(names[1:]):
            raise ValueError(f'exact streams {list(exact)} must be among {names[1:]}')
        self.exact = frozenset(exact)
        self.tolerance, self.max_wait = float(tolerance), float(max_wait)
        self._queues = {name: deque(maxlen=queue_size) for name in names}
        self.dropped = 0  # anchors that never found a complete match

    def add(self, name: str, stamp: float, msg) -> dict | None:
        """
        Add `msg` of stream `name` stamped `stamp` (s); return a complete match or None.

        A match is {name: msg} for every stream plus 'stamp' (the anchor's); matched messages
        and older anchors leave the queues.
        """
        if name not in self._queues:
            raise ValueError(f'unknown stream {name!r}; streams: {", ".join(self.names)}')
        self._queues[name].append((float(stamp), msg))
        return self._match()

    def _nearest(self, name: str, stamp: float):
        best, tolerance = None, 0.0 if name in self.exact else self.tolerance
        for item in self._queues[name]:
            gap = abs(item[0] - stamp)
            if gap <= tolerance and (best is None or gap < best[0]):
                best = (gap, item)
        return None if best is None else best[1]

    def _match(self) -> dict | None:
        anchors = self._queues[self.anchor]
        newest = max((s for s, _ in anchors), default=None)
        # Newest anchor first: a fresh complete set beats an older one.
        for item in sorted(anchors, key=lambda a: -a[0]):
            stamp = item[0]
            found = {n: self._nearest(n, stamp) for n in self.names[1:]}
            if all(v is not None for v in found.values()):
                self._consume(stamp, found)
                return {'stamp': stamp, self.anchor: item[1],
                        **{n: v[1] for n, v in found.items()}}
        while anchors and newest - anchors[0][0] > self.max_wait:
            anchors.popleft()
            self.dropped += 1
        return None

    def _consume(self, stamp: float, found: dict) -> None:
        anchors = self._queues[self.anchor]
        kept = [a for a in anchors if a[0] > stamp]
        self.dropped += len(anchors) - len(kept) - 1
        anchors.clear()
        anchors.extend(kept)
        for name, item in found.items():
            queue = self._queues[name]
            kept = [m for m in queue if m[0] >= item[0] and m is not item]
            queue.clear()
            queue.extend(kept)


class StampBuffer:
    """
    The newest messages of one stream, looked up by the stamp nearest another message's.

    For a consumer that has its own anchor (a grounded frame) and needs, say, the depth image
    taken at the same time. Thread-safe: filled by subscription callbacks, read by a worker.
    """

    def __init__(self, tolerance: float = 0.05, size: int = 30):
        if not tolerance >= 0:
            raise ValueError(f'tolerance must be >= 0 seconds, got {tolerance}')
        self.tolerance = float(tolerance)
        self._items = deque(maxlen=size)
        self._lock = Condition()  # re-entrant: nearest() runs inside wait_nearest()

    def add(self, stamp: float, msg) -> None:
        """Keep `msg` stamped `stamp` (s); the oldest one leaves when the buffer is full."""
        with self._lock:
            self._items.append((float(stamp), msg))
            self._lock.notify_all()

    def wait_nearest(self, stamp: float, timeout: float):
        """
        Return nearest(stamp), first waiting up to `timeout` s for one within tolerance.

        It waits only while none is within tolerance and none has reached `stamp` yet. A camera
        driver publishes colour and depth of one instant separately, so the depth of
        a frame may arrive just after the frame. A stream that never sent anything is not
        waited for.
        """
        end = time.monotonic() + timeout
        with self._lock:
            while (self._items and max(s for s, _ in self._items) < stamp
                   and self.nearest(stamp) is None):
                left = end - time.monotonic()
                if left <= 0 or not self._lock.wait(left):
                    break
        return self.nearest(stamp)

    def nearest(self, stamp: float):
        """Return the message nearest `stamp` within the tolerance, or None."""
        with self._lock:
            items = list(self._items)
        # Newest first, so equal stamps (unstamped drivers: all zero) give the newest message.
        best = min(reversed(items), key=lambda item: abs(item[0] - stamp), default=None)
        return best[1] if best is not None and abs(best[0] - stamp) <= self.tolerance else None

    def __len__(self) -> int:
        return len(self._items)
