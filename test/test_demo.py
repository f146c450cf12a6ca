"""The main job runs to the end: simulator, grounding and policy over real DDS, strip written."""
import os
from pathlib import Path
import re
import subprocess
import sys

DOMAIN = '76'
SEED = 200001


def test_main_job_grounds_and_picks(tmp_path, gl_context):
    strip = tmp_path / 'strip.png'
    env = dict(os.environ, ROS_DOMAIN_ID=DOMAIN, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl'))
    run = subprocess.run(
        [sys.executable, '-m', 'clip_ros.tools.demo', '--seeds', str(SEED), '--measure', '2',
         '--output', str(strip)],
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
    assert Path(strip).stat().st_size > 10_000
