"""The ROS-free layers import with no ROS installed, and imports only go down the layers."""
import ast
import json
import os
from pathlib import Path
import subprocess
import sys

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'clip_ros'
ROS_FREE_PACKAGES = ('clip_ros.perception', 'clip_ros.policy', 'clip_ros.sim', 'clip_ros.learning')
# Tools that run ROS graphs; every other tool is ROS-free.
ROS_TOOLS = ('demo', 'flood', 'flood_cameras', 'policy_demo')
# What each layer may import: perception <- policy <- sim/learning (learning may use the
# simulator to render data), nodes on top, tools over everything.
ALLOWED = {
    'perception': {'perception'},
    'policy': {'perception', 'policy'},
    'sim': {'perception', 'policy', 'sim'},
    'learning': {'perception', 'policy', 'sim', 'learning'},
    'nodes': {'perception', 'policy', 'sim', 'nodes'},
    'tools': {'perception', 'policy', 'sim', 'learning', 'nodes', 'tools'},
}

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
    if not hasattr(package, '__path__'):
        continue  # a module, not a package: nothing below it
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


def ros_free_tools() -> list:
    return [f'clip_ros.tools.{p.stem}' for p in sorted((PACKAGE / 'tools').glob('*.py'))
            if p.stem not in ROS_TOOLS + ('__init__',)]


def test_ros_free_packages_import_without_ros():
    report = run_check(*ROS_FREE_PACKAGES, *ros_free_tools())
    assert not report['errors'], 'modules failed to import without ROS:\n' + '\n'.join(
        f'  {name}: {error}' for name, error in sorted(report['errors'].items()))
    assert not report['attempts'], f'ROS modules were imported: {report["attempts"]}'
    assert set(ROS_FREE_PACKAGES) <= set(report['imported'])
    assert set(ros_free_tools()) <= set(report['imported'])


def test_checker_blocks_ros():
    # Guards against a vacuous pass: ROS modules must fail to import under the blocker.
    report = run_check('rclpy', 'std_msgs')
    assert set(report['errors']) == {'rclpy', 'std_msgs'}
    assert report['attempts'] == ['rclpy', 'std_msgs']


def module_imports() -> dict:
    """Return {module: set of clip_ros modules it imports} over the package, lazy imports too."""
    graph = {}
    for path in PACKAGE.rglob('*.py'):
        name = '.'.join(path.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                found |= {f'{base}.{a.name}' if _is_module(f'{base}.{a.name}') else base
                          for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m.startswith('clip_ros.') and m != name}
    return graph


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split('.'))
    return path.with_suffix('.py').is_file() or (path / '__init__.py').is_file()


def _layer(module: str) -> str:
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else ''


def test_every_module_belongs_to_a_layer():
    # Only the package's own __init__ and the launch helper live outside the layers.
    outside = {m for m in module_imports() if _layer(m) not in ALLOWED}
    assert outside <= {'clip_ros', 'clip_ros.perception_launch'}, sorted(outside)


def test_imports_only_go_down_the_layers():
    wrong = [f'{m} -> {d}' for m, deps in module_imports().items() if _layer(m) in ALLOWED
             for d in deps if _layer(d) and _layer(d) not in ALLOWED[_layer(m)]]
    assert not wrong, 'imports against the layer order:\n' + '\n'.join(sorted(wrong))


def find_cycle(graph: dict) -> list:
    """Return one import cycle as a list of modules, or [] when the graph has none."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 'open':
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_no_import_cycles():
    cycle = find_cycle(module_imports())
    assert not cycle, 'import cycle: ' + ' -> '.join(cycle)


def test_cycle_finder_finds_a_cycle():
    # Guards against a vacuous pass of the cycle test.
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) == []
