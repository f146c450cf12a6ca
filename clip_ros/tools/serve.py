"""
Serve a model's grounding passes to a fleet from one Triton Inference Server.

    serve --model tabletop                      # localhost:8001 (gRPC), :8000 (HTTP)
    serve --model tabletop --host 0.0.0.0 --ssl-cert server.crt --ssl-key server.key

Exports the model's ONNX graphs (perception.export, cached per weights), writes a bundle
(the five graphs, the shape head's where the model has one, and bundle.json, the model
description robots read instead of weights),
then replaces itself with scripts/triton_server.py in the server environment (.venv-serve:
Debian's python3.11 with nvidia-pytriton and onnxruntime; `scripts/setup.sh` makes it). The
server process holds one copy of the model; torch is gone from it after the exec.
"""
import argparse
import json
import os
from pathlib import Path
import sys

from clip_ros.perception.tokenizer import CONTEXT_LENGTH
from clip_ros.tools import export as export_tool
from clip_ros.tools.cli import count, writable

ROOT = Path(__file__).resolve().parents[2]


def server_script() -> Path:
    """Return the server script: the checkout's, else the installed package's share copy."""
    here = ROOT / 'scripts' / 'triton_server.py'
    if here.is_file():
        return here
    for prefix in (Path(sys.prefix), *(Path(p) for p in os.environ.get(
            'AMENT_PREFIX_PATH', '').split(os.pathsep) if p)):
        installed = prefix / 'share' / 'clip_ros' / 'scripts' / 'triton_server.py'
        if installed.is_file():
            return installed
    return here  # named in the error when it is missing


SERVER_SCRIPT = server_script()
PYTHON_ENV = 'CLIP_ROS_SERVE_PYTHON'
DEFAULT_PYTHON = ROOT / '.venv-serve' / 'bin' / 'python'
PORT = count(1, 65535)
GRAPHS = ('clipseg_visual', 'clipseg_decoder', 'clipseg_text', 'clip_image', 'clip_text')
# Options passed through to the server script unchanged.
SERVER_OPTIONS = (('--host', str, '127.0.0.1',
                   'listen address (default localhost; 0.0.0.0 for robots on a network: use TLS)'),
                  ('--grpc-port', PORT, 8001, 'gRPC port robots connect to (triton_url)'),
                  ('--http-port', PORT, 8000, 'HTTP port (on 127.0.0.1 only with TLS)'),
                  ('--metrics-port', PORT, 8002, 'Prometheus metrics port'),
                  ('--max-batch', count(1), 8, 'most frames the dynamic batcher joins'),
                  ('--max-crops', count(1), 64, 'most crops or phrases in one batch'),
                  ('--delay-us', count(0), 2000, 'how long the batcher waits for other robots'),
                  ('--threads', count(0), 0, 'ONNX Runtime threads per graph (0: its default)'),
                  ('--ssl-cert', str, None, 'PEM server certificate: gRPC over TLS'),
                  ('--ssl-key', str, None, 'PEM server key'),
                  ('--ssl-root', str, None, "PEM CA that signed the robots' certificates "
                                            '(mutual TLS)'))


def build_parser() -> argparse.ArgumentParser:
    """Return the command line parser: export's model options plus the server's."""
    parser = export_tool.build_parser()
    parser.prog = 'serve'
    parser.description = __doc__.strip().split('\n')[0]
    for flag, kind, default, text in SERVER_OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument('--bundle', type=Path, default=None,
                        help='bundle directory (default <graph cache>/triton/<models>)')
    parser.add_argument('--python', default=os.environ.get(PYTHON_ENV) or str(DEFAULT_PYTHON),
                        help=f'server environment interpreter (default ${PYTHON_ENV} or '
                             '.venv-serve/bin/python)')
    parser.add_argument('--export-only', action='store_true',
                        help='write the bundle, print its path and stop')
    parser.add_argument('--verbose', action='store_true', help="Triton's verbose log")
    return parser


def model_info(clip, clipseg) -> dict:
    """Return the description robots build their weightless model handles from."""
    import torch

    from clip_ros.perception.clipseg import ClipSegRunner
    with torch.no_grad():
        cond_dim = int(ClipSegRunner(clipseg).encode_text(['a photo']).shape[-1])
    return {
        'context_length': CONTEXT_LENGTH,
        'clip': {'name': clip.name, 'image_size': int(clip.image_size),
                 'mean': list(clip.mean), 'std': list(clip.std),
                 'logit_scale': float(clip.logit_scale), 'vocabulary': list(clip.vocabulary),
                 'synonyms': dict(clip.synonyms), 'abstain': dict(clip.abstain),
                 'light': dict(clip.light)},
        'clipseg': {'name': clipseg.name, 'image_size': int(clipseg.image_size),
                    'mean': list(clipseg.mean), 'std': list(clipseg.std),
                    'cond_dim': cond_dim},
        # The shape head's classes and crop geometry; its weights are the 'shape' graph.
        'shape': None if clip.shape is None else clip.shape.config(),
    }


def write_bundle(clip, clipseg, bundle=None, cache_dir=None) -> Path:
    """Export (or reuse) the graphs and write the bundle directory; return its path."""
    from clip_ros.perception.export import cache_root, export_models
    paths = export_models(clip, clipseg, cache_dir)
    if bundle is None:
        names = f"{paths['clip_image'].parent.name}+{paths['clipseg_visual'].parent.name}"
        bundle = cache_root(cache_dir) / 'triton' / names
    bundle = Path(bundle)
    bundle.mkdir(parents=True, exist_ok=True)
    for name in (*GRAPHS, 'shape'):
        link = bundle / f'{name}.onnx'
        if link.is_symlink() or link.exists():
            link.unlink()
        if name in paths:
            link.symlink_to(paths[name].resolve())
    info = model_info(clip, clipseg)
    # The graphs' directories name the weights: robots tell a retrained model of the same
    # name (or a server restarted on another bundle) from the one they configured with.
    info['graphs'] = sorted({path.parent.name for path in paths.values()})
    (bundle / 'bundle.json').write_text(json.dumps(info, indent=1) + '\n', encoding='utf-8')
    return bundle


def server_command(args, bundle: Path) -> list:
    """Return the server environment's command line for the bundle and the options."""
    command = [args.python, str(SERVER_SCRIPT), str(bundle)]
    for flag, _, _, _ in SERVER_OPTIONS:
        value = getattr(args, flag[2:].replace('-', '_'))
        if value is not None:
            command += [flag, str(value)]
    return command + (['--verbose'] if args.verbose else [])


def main(argv=None) -> int:
    """Write the bundle and exec the server (or stop after the bundle with --export-only)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from clip_ros.perception.registry import ModelLoadError
    if bool(args.ssl_cert) != bool(args.ssl_key) or (args.ssl_root and not args.ssl_cert):
        # Never a plain server when TLS was asked for.
        given = [flag for flag in ('--ssl-cert', '--ssl-key', '--ssl-root')
                 if getattr(args, flag[2:].replace('-', '_'))]
        print('serve: TLS needs --ssl-cert and --ssl-key together (and --ssl-root only with '
              f"them); got {', '.join(given)}", file=sys.stderr)
        return 2
    writable(parser, '--cache-dir', args.cache_dir, folder=True)
    writable(parser, '--bundle', args.bundle, folder=True)
    if not args.export_only and not os.access(args.python, os.X_OK):
        print(f'serve: no server environment at {args.python}; create it with '
              'scripts/setup.sh (unset CLIP_ROS_SKIP_TRITON) or set --python', file=sys.stderr)
        return 1
    try:
        clip, clipseg = export_tool.load_models(args)
    except (ModelLoadError, ValueError) as e:
        print(f'serve: {e}', file=sys.stderr)
        return 1
    bundle = write_bundle(clip, clipseg, args.bundle, args.cache_dir)
    print(f'serve: bundle {bundle}', flush=True)
    if args.export_only:
        return 0
    command = server_command(args, bundle)
    os.execv(command[0], command)  # the server replaces this torch process
    return 0


if __name__ == '__main__':
    sys.exit(main())
