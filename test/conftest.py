"""Shared test set-up: CPU only (CUDA on request), offline hubs, local DDS, one OpenGL probe."""
import os
import socket

import pytest

# Set before torch/transformers/rclpy import anywhere in the test session. CPU only, unless
# CLIP_ROS_TEST_CUDA=1 (scripts/gpu_check.sh): then the tests marked for CUDA run on the GPU.
if os.environ.get('CLIP_ROS_TEST_CUDA') != '1':
    os.environ['CUDA_VISIBLE_DEVICES'] = ''
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', '42')


@pytest.fixture(scope='session')
def gl_context():
    """
    Skip the requesting test when this machine has no offscreen OpenGL for MuJoCo.

    The one environment gap that may skip a simulator test. Probed once per session with the
    simulator's own backend choice (MUJOCO_GL, else EGL then OSMesa); any other error of a
    simulator test, a RuntimeError included, is a failure.
    """
    from clip_ros.sim.simulator import create_gl_context, NoOffscreenGLError

    try:
        context = create_gl_context(8, 8)
    except NoOffscreenGLError as e:
        pytest.skip(str(e))
    context.free()


@pytest.fixture
def network_attempts(monkeypatch):
    """
    Refuse every name lookup and connection of the test; return the list of those attempted.

    A test of a path that must never download asserts the list stays empty: the refusal alone
    could be caught and reported like a missing file.
    """
    attempts = []

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(host)
        raise socket.gaierror(socket.EAI_NONAME, 'no network in this test')

    def connect(sock, address):
        attempts.append(address)
        raise OSError('no network in this test')
    monkeypatch.setattr(socket, 'getaddrinfo', getaddrinfo)
    monkeypatch.setattr(socket.socket, 'connect', connect)
    return attempts
