"""
One loading path for every node and tool: CLIP, CLIPSeg, or the bundled model in their place.

Device and dtype are resolved once per load (registry.resolve_placement), once for both models
in load_or_tabletop; warnings go to the 'clip_ros' logger, which a node forwards to its own log
(nodes.managed).
"""
from clip_ros.perception.clip import load_clip
from clip_ros.perception.clipseg import check_clipseg_path, load_clipseg
from clip_ros.perception.registry import ModelLoadError, ModelNotFoundError, resolve_placement
from clip_ros.perception.tabletop_model import load_tabletop_clip, load_tabletop_clipseg


def load_or_tabletop(clip_spec: tuple, clipseg_name: str, device='auto', dtype='auto',
                     cache_dir=None) -> tuple:
    """
    Load the requested CLIP and CLIPSeg, or the bundled tabletop model when they are missing.

    Parameters
    ----------
    clip_spec
        (arch, pretrained) for load_clip.
    clipseg_name
        name for load_clipseg.
    device, dtype, cache_dir
        as for load_clip / load_clipseg.

    Returns
    -------
    (ClipModel, ClipSegModel, note): note is '' when the requested models loaded, else a
    sentence for the log saying why the bundled tabletop model is used instead.

    Raises
    ------
    ModelLoadError
        when the bundled model itself cannot be loaded.
    ModelNotFoundError
        when a weights file or CLIPSeg directory named explicitly does not exist.

    """
    # Once for every model loaded here: each loader would warn again about a missing GPU.
    device, dtype = resolve_placement(device, dtype)
    # Before CLIP loads: uncached CLIP weights would otherwise bring the fallback in before a
    # CLIPSeg directory that does not exist is ever looked at.
    check_clipseg_path(clipseg_name)
    try:
        clip = load_clip(*clip_spec, device=device, dtype=dtype, cache_dir=cache_dir)
        clipseg = load_clipseg(clipseg_name, device=device, dtype=dtype, cache_dir=cache_dir)
        return clip, clipseg, ''
    except ModelNotFoundError:
        raise  # an explicitly named file or directory is missing: say so, do not substitute
    except ModelLoadError as e:
        note = (f"pretrained weights are not available ({e}); using the bundled 'tabletop' "
                f'model instead (trained on simulator tabletop scenes only)')
    clip = load_tabletop_clip(device=device, dtype=dtype)
    return clip, load_tabletop_clipseg(device=device, dtype=dtype), note


__all__ = ['load_clip', 'load_clipseg', 'load_or_tabletop', 'ModelLoadError']
