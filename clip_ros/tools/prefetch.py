"""Download CLIP / CLIPSeg weights into a cache on a connected machine, then verify them."""
import argparse
import os
import socket
import sys
from urllib.parse import urlparse

from clip_ros.perception import registry
from clip_ros.tools.cli import writable

_TRUE = ('1', 'on', 'yes', 'true')


class PrefetchError(RuntimeError):
    """A download could not start or finish; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        prog='prefetch', description='Download CLIP and CLIPSeg weights into a cache, then '
        'verify them by loading once. Run on a connected machine; nodes never download.')
    parser.add_argument('--clip-arch', default=registry.DEFAULT_CLIP[0],
                        help='open_clip architecture (default: %(default)s)')
    parser.add_argument('--clip-pretrained', default=registry.DEFAULT_CLIP[1],
                        help="pretrained tag, weights file, or 'random' (default: %(default)s)")
    parser.add_argument('--clipseg', default=registry.DEFAULT_CLIPSEG,
                        help='CLIPSeg hub id, local directory, or tiny/random '
                        '(default: %(default)s)')
    parser.add_argument('--cache-dir', default=None,
                        help='cache root (default: open_clip and Hugging Face defaults)')
    parser.add_argument('--only', choices=('clip', 'clipseg'), default=None,
                        help='fetch only one of the two models')
    parser.add_argument('--no-verify', action='store_true',
                        help='skip loading the weights once after download')
    return parser


def offline_reason(host: str = 'huggingface.co', timeout: float = 3.0):
    """Return why downloads cannot work (offline flag, unreachable host), or None."""
    for flag in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
        if os.environ.get(flag, '').strip().lower() in _TRUE:
            return f'{flag} is set'
    import huggingface_hub
    if huggingface_hub.is_offline_mode():
        return 'huggingface_hub is in offline mode'
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as e:
        return f'cannot reach {host} ({e})'
    return None


def fetch_clip(arch: str, pretrained: str, cache_dir=None) -> str:
    """Download a CLIP tag through open_clip (progress bar shown); return a description."""
    if registry.clean_tag(pretrained) in registry.RANDOM_TAGS:
        return f'CLIP {arch}/random: random initialisation, nothing to download'
    if registry.is_weight_path(pretrained):
        if not os.path.isfile(pretrained):
            raise PrefetchError(f'CLIP {arch}: local file {pretrained} does not exist')
        return f'CLIP {arch}: local file {pretrained}, nothing to download'
    weights = registry.clip_weights(arch, pretrained)
    path = registry.find_cached_clip(weights, cache_dir)
    if path:
        return f'CLIP {weights.arch}/{weights.tag}: already cached at {path}'
    host = 'huggingface.co' if weights.hf_hub else urlparse(weights.url).hostname
    _require_online(f'CLIP {weights.arch}/{weights.tag}', host)
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg
    try:
        path = download_pretrained(get_pretrained_cfg(weights.arch, weights.tag),
                                   cache_dir=cache_dir)
    except Exception as e:
        raise PrefetchError(f'CLIP {weights.arch}/{weights.tag}: download failed: {e}') from e
    return f'CLIP {weights.arch}/{weights.tag}: downloaded to {path}'


def fetch_clipseg(name: str, cache_dir=None) -> str:
    """Download a CLIPSeg hub model through huggingface_hub; return a description."""
    spec = registry.clipseg_spec(name)
    if spec is not None and spec.config:
        return f"CLIPSeg '{name}': random initialisation, nothing to download"
    if os.path.isdir(os.path.expanduser(name)):
        return f"CLIPSeg '{name}': local directory"
    import huggingface_hub
    if isinstance(huggingface_hub.try_to_load_from_cache(name, 'config.json', cache_dir), str):
        return f"CLIPSeg '{name}': already cached"
    _require_online(f"CLIPSeg '{name}'", 'huggingface.co')
    from transformers import CLIPSegForImageSegmentation
    try:
        CLIPSegForImageSegmentation.from_pretrained(name, cache_dir=cache_dir)
    except Exception as e:
        raise PrefetchError(f"CLIPSeg '{name}': download failed: {e}") from e
    return f"CLIPSeg '{name}': downloaded to {cache_dir or huggingface_hub.constants.HF_HUB_CACHE}"


def _require_online(what: str, host: str) -> None:
    reason = offline_reason(host)
    if reason:
        raise PrefetchError(
            f'{what}: weights are not cached and cannot be downloaded here: {reason}. Run this '
            f'command on a machine with internet access (unset HF_HUB_OFFLINE there), then copy '
            f'the cache directory over and pass it as cache_dir / --cache-dir.')


def verify(args) -> list:
    """Load the selected models once on CPU; return one line per model."""
    from clip_ros.perception.loading import load_clip, load_clipseg
    lines = []
    if args.only != 'clipseg':
        clip = load_clip(args.clip_arch, args.clip_pretrained, 'cpu', 'float32', args.cache_dir)
        lines.append(f'verified CLIP {clip.name}')
    if args.only != 'clip':
        seg = load_clipseg(args.clipseg, 'cpu', 'float32', args.cache_dir)
        lines.append(f'verified CLIPSeg {seg.name}')
    return lines


def main(argv=None) -> int:
    """Fetch and verify the configured weights; return 0 on success, 1 on failure."""
    parser = build_parser()
    args = parser.parse_args(argv)
    writable(parser, '--cache-dir', args.cache_dir, folder=True)  # the downloads go there
    try:
        if args.only != 'clipseg':
            print(fetch_clip(args.clip_arch, args.clip_pretrained, args.cache_dir), flush=True)
        if args.only != 'clip':
            print(fetch_clipseg(args.clipseg, args.cache_dir), flush=True)
        lines = [] if args.no_verify else verify(args)
    except (PrefetchError, registry.ModelLoadError, ValueError) as e:
        print(f'prefetch: error: {e}', file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
