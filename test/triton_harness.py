"""Start and stop a real Triton server (scripts/triton_server.py in .venv-serve) for tests."""
import os
from pathlib import Path
import signal
import socket
import subprocess
import time

import pytest

from clip_ros.perception.triton_client import server_ready

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'triton_server.py'
START_TIMEOUT = 180.0  # five Python models load one after another: ~20 s here, more when busy


def serve_python() -> str:
    """Return the server environment's interpreter, or skip when it is not installed."""
    pytest.importorskip('tritonclient.grpc', reason='tritonclient is not installed')
    python = os.environ.get('CLIP_ROS_SERVE_PYTHON') or str(ROOT / '.venv-serve/bin/python')
    if not os.access(python, os.X_OK):
        pytest.skip(f'no server environment at {python} (scripts/setup.sh makes .venv-serve)')
    if subprocess.run([python, '-c', 'import pytriton, onnxruntime'],
                      capture_output=True).returncode:
        pytest.skip(f'{python} lacks nvidia-pytriton or onnxruntime')
    return python


def free_ports(count: int) -> list:
    """Return `count` TCP ports free on localhost now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Server:
    """One server process (and its Triton children, in their own process group)."""

    def __init__(self, bundle: Path, log: Path, *extra: str):
        self.bundle, self.log, self.extra = bundle, log, extra
        self.grpc, self.http, self.metrics = free_ports(3)
        self.url = f'localhost:{self.grpc}'
        self.proc = None

    def start(self, wait: bool = True) -> 'Server':
        """Start the server on its ports; wait until every model is ready."""
        command = [serve_python(), str(SCRIPT), str(self.bundle), '--grpc-port', str(self.grpc),
                   '--http-port', str(self.http), '--metrics-port', str(self.metrics),
                   '--threads', '1', *self.extra]
        with open(self.log, 'a') as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Wait until the server answers; fail with its log's tail when it does not."""
        deadline = time.monotonic() + START_TIMEOUT
        while not server_ready(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors='replace')[-3000:]
                self.stop()
                raise AssertionError(f'Triton server did not start:\n{tail}')
            time.sleep(0.5)

    def kill(self) -> None:
        """Kill the server and its children at once, as a crash would."""
        self.stop(signal.SIGKILL)

    def stop(self, sig=signal.SIGTERM) -> None:
        """Stop the server's process group (SIGKILL when it does not exit within 30 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # The Triton children share the group: make sure none outlives the test.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
