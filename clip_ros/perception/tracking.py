"""Keep instance ids stable across frames: greedy mask/box IoU association per label."""
from dataclasses import dataclass
import itertools

import numpy as np

from clip_ros.perception.geometry import box_iou, mask_iou


@dataclass
class Track:
    """One physical object followed across frames."""

    track_id: int
    label: str
    box: np.ndarray  # [4] x_min, y_min, x_max, y_max in image pixels
    mask: np.ndarray | None  # [h, w] bool, the label image subsampled by the tracker's stride
    velocity: np.ndarray  # [2] box-centre pixels per second, smoothed
    last_seen: float  # seconds
    hits: int = 1


def shift_mask(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a bool mask by whole pixels, filling the uncovered border with False."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src = mask[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    out[max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)] = src
    return out


class Tracker:
    """
    Give each detection the id of the object it continues, or a new id.

    A detection continues a track of the same label when their IoU (masks when both have
    one, else boxes), after moving the track by its smoothed velocity, is at least
    `iou_threshold`; pairs are taken greedily from the highest IoU. A track unseen for more
    than `lost_timeout` seconds is forgotten. Ids start at 1 and are never reused until
    `reset`.

    Parameters
    ----------
    iou_threshold : float
        Smallest IoU that continues a track.
    lost_timeout : float
        Seconds a track survives without a matching detection.
    mask_stride : int
        Subsampling of label images before mask IoU (speed; 4 keeps 1/16 of the pixels).
    smoothing : float
        Weight of the newest velocity estimate in the running average.

    """

    def __init__(self, iou_threshold: float = 0.3, lost_timeout: float = 1.0,
                 mask_stride: int = 4, smoothing: float = 0.5):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f'iou_threshold must be in (0, 1], got {iou_threshold}')
        if lost_timeout < 0.0 or mask_stride < 1:
            raise ValueError(f'lost_timeout must be >= 0 and mask_stride >= 1, got '
                             f'{lost_timeout}, {mask_stride}')
        self.iou_threshold = iou_threshold
        self.lost_timeout = lost_timeout
        self.mask_stride = mask_stride
        self.smoothing = smoothing
        self.reset()

    def reset(self) -> None:
        """Forget every track and restart ids at 1."""
        self.tracks: list[Track] = []
        self._ids = itertools.count(1)

    def update(self, labels, boxes, stamp: float, label_image: np.ndarray | None = None) -> list:
        """
        Associate one frame's detections with the tracks; return one id per detection.

        Parameters
        ----------
        labels : sequence of str
            Label (phrase) of each detection; only equal labels are associated.
        boxes : array-like [K, 4]
            x_min, y_min, x_max, y_max in image pixels.
        stamp : float
            Frame time in seconds.
        label_image : np.ndarray [H, W] or None
            Pixel value = detection index + 1, 0 background (a GroundingResult's label image).

        Returns
        -------
        list of int
            Track id of each detection, in input order.

        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(labels) != len(boxes):
            raise ValueError(f'{len(labels)} labels for {len(boxes)} boxes')
        self._expire(stamp)
        masks = None
        if label_image is not None:
            small = np.asarray(label_image)[::self.mask_stride, ::self.mask_stride]
            masks = small[None] == np.arange(1, len(boxes) + 1)[:, None, None]  # [K, h, w]
        iou = self._iou(labels, boxes, masks, stamp)
        matched = self._greedy(iou)
        ids = []
        for k in range(len(boxes)):
            mask = masks[k] if masks is not None else None
            track = matched.get(k)
            if track is None:
                track = Track(next(self._ids), labels[k], boxes[k].copy(), mask, np.zeros(2),
                              stamp)
                self.tracks.append(track)
            else:
                self._advance(track, boxes[k], mask, stamp)
            ids.append(track.track_id)
        return ids

    def _expire(self, stamp: float) -> None:
        if any(stamp < t.last_seen - self.lost_timeout for t in self.tracks):
            self.tracks = []  # time jumped back (a replayed recording): old tracks are stale
        self.tracks = [t for t in self.tracks if stamp - t.last_seen <= self.lost_timeout]

    def _iou(self, labels, boxes, masks, stamp: float) -> np.ndarray:
        """Return the IoU [K, T] of detections with the predicted tracks, -1 across labels."""
        iou = np.full((len(boxes), len(self.tracks)), -1.0)
        for t, track in enumerate(self.tracks):
            shift = track.velocity * max(stamp - track.last_seen, 0.0)
            same = [k for k, label in enumerate(labels) if label == track.label]
            if not same:
                continue
            iou[same, t] = box_iou(boxes[same], (track.box + np.tile(shift, 2))[None])[:, 0]
            with_masks = masks is not None and track.mask is not None
            if with_masks and track.mask.shape == masks.shape[1:]:
                dx, dy = np.round(shift / self.mask_stride).astype(int)
                predicted = shift_mask(track.mask, int(dy), int(dx))
                # A thin object can miss every sampled pixel: its boxes then decide.
                sampled = [k for k in same if masks[k].any()] if predicted.any() else []
                if sampled:
                    iou[sampled, t] = mask_iou(masks[sampled], predicted[None])[:, 0]
        return iou

    def _greedy(self, iou: np.ndarray) -> dict:
        """Pair detections with tracks from the highest IoU down; return {detection: track}."""
        matched, used = {}, set()
        if not iou.size:
            return matched
        order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None), iou.shape))[0]
        for k, t in order:
            if iou[k, t] < self.iou_threshold:
                break
            if k not in matched and t not in used:
                matched[int(k)] = self.tracks[t]
                used.add(t)
        return matched

    def _advance(self, track: Track, box: np.ndarray, mask, stamp: float) -> None:
        dt = stamp - track.last_seen
        if dt > 0:
            step = ((box[:2] + box[2:]) - (track.box[:2] + track.box[2:])) / 2.0 / dt
            # The first estimate is taken whole: a new track has no velocity to average with.
            weight = 1.0 if track.hits == 1 else self.smoothing
            track.velocity = weight * step + (1.0 - weight) * track.velocity
        track.box, track.mask, track.last_seen = box.copy(), mask, stamp
        track.hits += 1
