"""Export the grounding pipeline's ONNX graphs for a model and print where they went."""
import argparse
import sys

from clip_ros.perception import names
from clip_ros.tools.cli import writable

MODELS = ('tabletop', 'tiny', 'pretrained')


def build_parser() -> argparse.ArgumentParser:
    """Return the command line parser."""
    parser = argparse.ArgumentParser(
        prog='export', description=(
            'Write ONNX graphs of the CLIPSeg vision pass, CLIPSeg decoder, CLIP image tower and '
            "text towers for the 'onnxruntime' backend (clip_ros.perception.backends)."))
    parser.add_argument('--model', choices=MODELS, default='tabletop',
                        help="'tabletop' (bundled), 'tiny' (random test configs) or 'pretrained' "
                             '(--clip-arch/--clip-pretrained/--clipseg, from the local cache)')
    parser.add_argument('--clip-arch', default=names.DEFAULT_CLIP[0])
    parser.add_argument('--clip-pretrained', default=names.DEFAULT_CLIP[1])
    parser.add_argument('--clipseg', default=names.DEFAULT_CLIPSEG)
    parser.add_argument('--hub-cache-dir', default=None,
                        help='hub cache the prefetch command filled (pretrained only)')
    parser.add_argument('--cache-dir', default=None,
                        help='graph cache root (default $CLIP_ROS_ONNX_CACHE or '
                             '~/.cache/clip_ros/onnx)')
    parser.add_argument('--force', action='store_true', help='rewrite graphs already cached')
    return parser


def load_models(args) -> tuple:
    """Return (ClipModel, ClipSegModel) for the chosen --model, on CPU."""
    from clip_ros.perception.loading import load_clip, load_clipseg
    from clip_ros.perception.tabletop_model import load_tabletop_clip, load_tabletop_clipseg
    if args.model == 'tabletop':
        return load_tabletop_clip(device='cpu'), load_tabletop_clipseg(device='cpu')
    if args.model == 'tiny':
        return load_clip('tiny', '', device='cpu'), load_clipseg('tiny', device='cpu')
    return (load_clip(args.clip_arch, args.clip_pretrained, device='cpu',
                      cache_dir=args.hub_cache_dir),
            load_clipseg(args.clipseg, device='cpu', cache_dir=args.hub_cache_dir))


def main(argv=None) -> int:
    """Export the graphs; print one line per graph written or reused."""
    parser = build_parser()
    args = parser.parse_args(argv)
    writable(parser, '--cache-dir', args.cache_dir, folder=True)
    from clip_ros.perception.export import export_models
    from clip_ros.perception.registry import ModelLoadError
    try:
        clip, clipseg = load_models(args)
    except (ModelLoadError, ValueError) as e:
        print(f'export: {e}', file=sys.stderr)
        return 1
    paths = export_models(clip, clipseg, args.cache_dir, force=args.force)
    for name, path in paths.items():
        print(f'{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
