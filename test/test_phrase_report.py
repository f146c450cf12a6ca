"""PhraseReport: the latched grounding_status follows the newest outcome of each camera."""
import json
import threading

from rclpy.logging import get_logger
from std_msgs.msg import Header

from clip_ros.nodes.phrase_report import PhraseReport

PHRASES = ['red block', 'zebra']
WORDS = {'zebra': 'unknown word: zebra'}  # known from the words alone
FRAME = {'zebra': 'unknown word: zebra', 'red block': 'not found: red block'}


class Topic:
    """Records what is published; may run `during` inside its first publish."""

    def __init__(self):
        self.sent = []
        self.during = None

    def publish(self, msg) -> None:
        during, self.during = self.during, None
        if during is not None:
            during()
        self.sent.append(json.loads(msg.data))


def test_a_frame_reported_while_a_new_phrase_set_starts_is_the_one_left_latched():
    report, topic = PhraseReport(get_logger('test_phrase_report')), Topic()
    header = Header()
    header.stamp.sec = 7

    def frame_meanwhile():
        # The worker reports a frame grounded with the new phrases while the executor
        # publishes the phrase set's first status.
        worker = threading.Thread(
            target=report.update, args=('', PHRASES, FRAME, header, topic))
        worker.start()
        worker.join(0.5)  # blocks on the report's lock when publishing holds it
        waiting.append(worker)

    waiting = []
    topic.during = frame_meanwhile
    report.start(PHRASES, WORDS, {'': topic})
    waiting[0].join(10.0)
    report.update('', PHRASES, FRAME, header, topic)  # the next frame: same outcome
    assert topic.sent[-1]['rejected'] == FRAME and topic.sent[-1]['stamp'] == [7, 0]
    assert report.diagnostic('n', 'cpu').message == 'not found: red block; unknown word: zebra'
