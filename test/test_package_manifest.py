"""Every third-party module imported under clip_ros/ is declared where a user installs from."""
import ast
from pathlib import Path
import re
import sys
import xml.etree.ElementTree as ET

ROOT = Path(__file__).resolve().parents[1]
PIP_FILE = 'scripts/requirements-robot.txt'
# Top-level module -> its rosdep key in package.xml, or 'pip:<name>' in PIP_FILE.
DECLARED_AS = {
    'PIL': 'python3-pil',
    'cv_bridge': 'cv_bridge',
    'diagnostic_msgs': 'diagnostic_msgs',
    'ftfy': 'pip:ftfy',
    'geometry_msgs': 'geometry_msgs',
    'huggingface_hub': 'pip:huggingface_hub',
    'launch': 'launch',
    'launch_ros': 'launch_ros',
    'matplotlib': 'python3-matplotlib',
    'mcap': 'pip:mcap',
    'mcap_ros2': 'pip:mcap-ros2-support',
    'mujoco': 'pip:mujoco',
    'numpy': 'python3-numpy',
    'onnx': 'pip:onnx',
    'onnxruntime': 'pip:onnxruntime',
    'openvino': 'pip:openvino',
    'open_clip': 'pip:open_clip_torch',
    'rcl_interfaces': 'rcl_interfaces',
    'rclpy': 'rclpy',
    'regex': 'pip:regex',
    'safetensors': 'pip:safetensors',
    'scipy': 'python3-scipy',
    'sensor_msgs': 'sensor_msgs',
    'std_msgs': 'std_msgs',
    'tf2_ros': 'tf2_ros_py',  # the module's package; tf2_ros is the C++ library
    'torch': 'python3-torch',
    'torchvision': 'python3-torchvision',
    'tqdm': 'python3-tqdm',
    'tritonclient': 'pip:tritonclient',
    'transformers': 'pip:transformers',
    'vision_msgs': 'vision_msgs',
    'visualization_msgs': 'visualization_msgs',
    'yaml': 'python3-yaml',
}
# System-package keys checked against ros/rosdistro rosdep/base.yaml and python.yaml: each
# resolves to an apt package on Ubuntu 24.04 (Jazzy, Kilted). python3-safetensors, for one, is
# no key, and rosdep stops at the first unknown key. Check a new key there before adding it.
ROSDEP_SYSTEM_KEYS = {
    'python3-hypothesis', 'python3-matplotlib', 'python3-numpy', 'python3-pil', 'python3-pytest',
    'python3-scipy', 'python3-torch', 'python3-torchvision', 'python3-tqdm', 'python3-yaml',
}


def third_party_imports() -> dict:
    """Return {top-level module: first file importing it} for clip_ros/, stdlib excluded."""
    found = {}
    for path in sorted((ROOT / 'clip_ros').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split('.')[0]
                if top != 'clip_ros' and top not in sys.stdlib_module_names:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def package_keys() -> set:
    root = ET.parse(ROOT / 'package.xml').getroot()
    return {e.text.strip() for tag in ('depend', 'exec_depend') for e in root.iter(tag)}


def pip_names() -> set:
    lines = (ROOT / PIP_FILE).read_text().splitlines()
    return {re.split(r'[<>=!~;\[ ]', line.strip())[0].lower() for line in lines
            if line.strip() and not line.lstrip().startswith('#')}


def test_every_import_is_declared():
    imports, keys, pips = third_party_imports(), package_keys(), pip_names()
    unmapped = {m: f for m, f in imports.items() if m not in DECLARED_AS}
    assert not unmapped, (f'imported but not in DECLARED_AS (add the rosdep key to package.xml, '
                          f'or the pip name to {PIP_FILE}): {unmapped}')
    missing = []
    for module in imports:
        key = DECLARED_AS[module]
        if key.startswith('pip:'):
            if key[4:].lower() not in pips:
                missing.append(f'{module}: {key[4:]} not in {PIP_FILE}')
        elif key not in keys:
            missing.append(f'{module}: {key} not a depend/exec_depend of package.xml')
    assert not missing, missing


def test_python_keys_exist_in_rosdep():
    root = ET.parse(ROOT / 'package.xml').getroot()
    keys = {e.text.strip() for e in root if e.tag.endswith('depend')}
    unknown = {k for k in keys if k.startswith('python3-')} - ROSDEP_SYSTEM_KEYS
    assert not unknown, f'not a checked apt rosdep key (rosdep install would stop): {unknown}'


def test_readme_names_the_pip_step():
    assert PIP_FILE in (ROOT / 'README.md').read_text()


def test_setup_py_has_no_option_setuptools_does_not_know():
    # colcon build shows a setup.py warning as the package's stderr output.
    import subprocess
    done = subprocess.run([sys.executable, 'setup.py', '--name'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == 'clip_ros', done.stderr
    assert 'Unknown distribution option' not in done.stderr, done.stderr
