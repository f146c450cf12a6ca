"""
What became of each active phrase in grounding_node: found, or refused with a reason.

The pipeline gives no detection for a phrase it refuses ('not found: <phrase>', 'unknown
word: <word>', 'two objects: ...'); PhraseReport turns that into one log line per phrase and
reason while the phrase set (a command) lasts, a latched `grounding_status` message per camera
whenever the outcome changes, and a DiagnosticStatus for `/diagnostics`.
"""
import threading

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from clip_ros.nodes.messages import grounding_status_msg

# Reasons that come from the words alone: the same in every frame, so reported at once.
NOT_FOUND = 'not found'


class PhraseReport:
    """Per camera outcome of the active phrases; thread-safe (worker and executor threads)."""

    def __init__(self, logger):
        self._logger = logger
        self._lock = threading.Lock()
        self._phrases: list = []
        self._logged: set = set()  # (phrase, reason) logged while this phrase set lasts
        self._sent: dict = {}      # camera -> (phrases, rejected) last published
        self._latest: dict = {}    # camera -> rejected of its latest frame

    def start(self, phrases: list, rejected: dict, publishers: dict) -> None:
        """Begin a new phrase set; publish the reasons known from the words alone."""
        with self._lock:
            self._phrases, self._logged, self._sent = list(phrases), set(), {}
            self._latest = {camera: dict(rejected) for camera in publishers}
        for camera, publisher in publishers.items():
            self.update(camera, phrases, rejected, None, publisher)

    def update(self, camera: str, phrases: list, rejected: dict, header, publisher) -> None:
        """Take one frame's refusals: log new ones once, publish the status when it changed."""
        lines = []
        with self._lock:
            if list(phrases) != self._phrases:
                return  # a frame grounded before the phrase set changed
            self._latest[camera] = dict(rejected)
            for phrase, reason in rejected.items():
                if (phrase, reason) not in self._logged:
                    self._logged.add((phrase, reason))
                    lines.append(f"{camera + ': ' if camera else ''}{reason} "
                                 f'(no detection published for {phrase!r})')
            key = (tuple(phrases), tuple(sorted(rejected.items())))
            if self._sent.get(camera) != key:
                self._sent[camera] = key
                # Under the lock: a status published out of order (a new phrase set's and a
                # frame's) would stay latched, as the next frames' outcome counts as sent.
                if publisher is not None:
                    publisher.publish(grounding_status_msg(phrases, rejected, header))
        for line in lines:
            self._logger.warning(line)

    def diagnostic(self, name: str, hardware_id: str) -> DiagnosticStatus:
        """Return a status naming every refused phrase; WARN for refusals of the words."""
        with self._lock:
            phrases = list(self._phrases)
            latest = {camera: dict(r) for camera, r in self._latest.items()}
        values, reasons, level = [], [], DiagnosticStatus.OK
        for phrase in phrases:
            outcome = sorted({r[phrase] for r in latest.values() if phrase in r})
            values.append(KeyValue(key=phrase, value='; '.join(outcome) or 'found'))
            reasons += outcome
            if any(not reason.startswith(NOT_FOUND) for reason in outcome):
                level = DiagnosticStatus.WARN
        message = '; '.join(dict.fromkeys(reasons)) or (
            'every phrase found' if phrases else 'no phrases')
        return DiagnosticStatus(level=level, name=name, message=message,
                                hardware_id=hardware_id, values=values)
