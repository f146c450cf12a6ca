"""The main job runs to the end: simulator, grounding and policy over real DDS, strip written."""
import os
from pathlib import Path
import re
import subprocess
import sys
import time

import pytest

DOMAIN = '76'
SEED = 200001


# The default (one process, onnxruntime on the CPU) and a process per node on torch.
LAYOUTS = {'one': [], 'per-node': ['--processes', 'per-node', '--backend', 'torch']}


@pytest.mark.parametrize('layout', list(LAYOUTS))
def test_main_job_grounds_and_picks(tmp_path, gl_context, layout):
    strip = tmp_path / 'strip.png'
    env = dict(os.environ, ROS_DOMAIN_ID=DOMAIN, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl'))
    run = subprocess.run(
        [sys.executable, '-m', 'clip_ros.tools.demo', '--seeds', str(SEED), '--measure', '2',
         '--output', str(strip), *LAYOUTS[layout]],
        env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    output = run.stdout[-2000:] + run.stderr[-2000:]
    assert run.returncode == 0, output
    assert 'simulator not started' not in run.stdout + run.stderr, output
    lines = [x for x in run.stdout.splitlines() if x.startswith(f'seed {SEED}')]
    assert len(lines) == 1, output
    line = lines[0]
    assert "grounded 'green block'" in line and '[ok]' in line, line
    # The policy must carry the command out: a rejection, abort or timeout fails the job.
    assert re.search(r'; policy succeeded\b', line), line
    assert re.search(r'grounded 1/1 commands', run.stdout), run.stdout
    rate = re.search(r'grounding rate ([0-9.]+) frames/s', run.stdout)
    assert rate and float(rate.group(1)) > 0, run.stdout
    expected = 'a process per node' if layout == 'per-node' else 'one process'
    assert expected in run.stdout, run.stdout
    assert Path(strip).stat().st_size > 10_000


def _children(pid: int) -> list:
    """Return the pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path('/proc').iterdir():
        try:
            if entry.name.isdigit() and int((entry / 'stat').read_text().rsplit(')', 1)[1]
                                            .split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def _running(pid: int) -> bool:
    """Return whether process `pid` exists and has not exited (a zombie has)."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def test_node_processes_stop_when_the_demo_is_killed(gl_context):
    env = dict(os.environ, ROS_DOMAIN_ID=DOMAIN, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl'))
    demo = subprocess.Popen(
        [sys.executable, '-m', 'clip_ros.tools.demo', '--seeds', str(SEED), '--measure', '60',
         '--processes', 'per-node'],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        stdin=subprocess.DEVNULL)
    try:
        for line in demo.stdout:  # the nodes are up once a command has been answered
            if line.startswith(f'seed {SEED}'):
                break
        children = _children(demo.pid)
        assert len(children) >= 3, children  # simulator, grounding, policy (+ resource tracker)
    finally:
        demo.kill()  # no clean-up in the demo: the nodes must notice by themselves
        demo.wait(30)
    deadline = time.time() + 30
    while time.time() < deadline and any(map(_running, children)):
        time.sleep(0.5)
    alive = [pid for pid in children if _running(pid)]
    assert not alive, f'node processes outlived the demo: {alive}'
