"""clip_ros.core and clip_ros.commands import with no ROS installed."""
import json
import os
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
ROS_FREE_PACKAGES = ('clip_ros.core', 'clip_ros.commands')

# Runs in a fresh interpreter: a meta path finder refuses every ROS module, records each
# attempt (even one caught by try/except), then every module of the ROS-free packages is imported.
CHECK = r"""
import importlib
import importlib.abc
import json
import pkgutil
import sys

BLOCKED = {'rclpy', 'rcl', 'rmw', 'cv_bridge', 'ament_index_python', 'launch_ros',
           'launch_testing_ros', 'message_filters', 'image_geometry', 'rosidl_runtime_py',
           'tf2_ros', 'vision_msgs'}
attempts = []


class BlockRos(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path=None, target=None):
        top = name.partition('.')[0]
        if (top in BLOCKED or top.endswith(('_msgs', '_interfaces', '_srvs'))
                or top.startswith(('rosidl_', 'rclpy', 'rmw_'))):
            attempts.append(name)
            raise ImportError(f'{name} is blocked: this module must not need ROS')
        return None


sys.meta_path.insert(0, BlockRos())
report = {'imported': [], 'errors': {}, 'attempts': attempts}
for package_name in sys.argv[1:]:
    try:
        package = importlib.import_module(package_name)
    except Exception as e:
        report['errors'][package_name] = f'{type(e).__name__}: {e}'
        continue
    report['imported'].append(package_name)
    # walk_packages imports subpackages itself; failures are imported again and reported below.
    walk = pkgutil.walk_packages(package.__path__, package_name + '.', onerror=lambda name: None)
    names = [info.name for info in walk]
    for name in names:
        try:
            importlib.import_module(name)
            report['imported'].append(name)
        except Exception as e:
            report['errors'][name] = f'{type(e).__name__}: {e}'
print('REPORT ' + json.dumps(report))
"""


def run_check(*packages):
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    proc = subprocess.run(
        [sys.executable, '-c', CHECK, *packages], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('REPORT ')]
    assert proc.returncode == 0 and lines, f'checker crashed:\n{proc.stdout}\n{proc.stderr}'
    return json.loads(lines[-1][len('REPORT '):])


def test_ros_free_packages_import_without_ros():
    report = run_check(*ROS_FREE_PACKAGES)
    assert not report['errors'], 'modules failed to import without ROS:\n' + '\n'.join(
        f'  {name}: {error}' for name, error in sorted(report['errors'].items()))
    assert not report['attempts'], f'ROS modules were imported: {report["attempts"]}'
    assert set(ROS_FREE_PACKAGES) <= set(report['imported'])


def test_checker_blocks_ros():
    # Guards against a vacuous pass: ROS modules must fail to import under the blocker.
    report = run_check('rclpy', 'std_msgs')
    assert set(report['errors']) == {'rclpy', 'std_msgs'}
    assert report['attempts'] == ['rclpy', 'std_msgs']
