"""Let mmsegmentation import on the pure-Python ``mmcv-lite``.

mmseg imports ``mmcv.ops`` at import time, which needs the compiled ``mmcv._ext``. When that module is absent we
register a stand-in whose attributes raise a clear error only when a compiled op is actually called; SNELLA and
every component our configs use (ViT/SAM backbones, UperNet, FCN heads, data transforms, IoUMetric) need none.
A real compiled mmcv is used untouched.

This file needs only the standard library, so a deploy environment without snella_seg (merged ViT models run on
mmseg and timm alone) can use it by path, either as a launcher:

    python mmcv_lite.py my_inference.py ARGS...      # or: python mmcv_lite.py -m MODULE ARGS...

or copied next to your script and imported before mmseg:

    import mmcv_lite; mmcv_lite.ensure_mmcv_ops_importable()

``import snella_seg`` uses it too, and also its warning filters (``quiet_third_party_warnings``), which the launcher
applies to the script it runs.
"""
import importlib.machinery
import importlib.util
import os
import runpy
import sys
import types
import warnings


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``mmcv._ext``: any op it is asked for raises, naming the op, only when called."""

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(
                f'mmcv compiled op {name!r} is not available: this environment has the pure-Python mmcv-lite. '
                'Install a compiled mmcv 2.1.0 (see README, "Compiled mmcv") to use models that need it.')
        return unavailable


def ensure_mmcv_ops_importable() -> bool:
    """Install the stand-in for ``mmcv._ext`` unless the compiled ops are there, so that mmseg can be imported.

    Returns:
        True when the real compiled ops are present; False when the stand-in is in place (or mmcv itself is
        missing, which mmseg's own import error will report).
    """
    if 'mmcv._ext' in sys.modules:
        return not isinstance(sys.modules['mmcv._ext'], _MissingCompiledOps)
    try:
        if importlib.util.find_spec('mmcv._ext') is not None:
            return True
    except ImportError:  # mmcv itself missing: mmseg's own import error will say so
        return False
    stand_in = _MissingCompiledOps('mmcv._ext')
    # A real spec: mmengine's SyncBN revert inspects module specs and crashes on None.
    stand_in.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', None)
    sys.modules['mmcv._ext'] = stand_in
    return False


# Warnings OpenMMLab's own code raises at every run that a user can do nothing about, each matched by its text and
# by the module it is attributed to, so that the same warning from anywhere else (and every warning of snella_seg)
# still shows.
THIRD_PARTY_NOISE = (
    # setuptools, through mmengine's is_installed (which imports and then reloads pkg_resources: two lines)
    (r'pkg_resources is deprecated as an API', r'mmengine\.utils\.package_utils|importlib'),
    (r'``build_loss`` would be deprecated soon', r'mmseg\.models\.builder'),
    (r'Default ``avg_non_ignore`` is False', r'mmseg\.models\.losses\.cross_entropy_loss'),
    (r'`reduce_zero_label` will be deprecated', r'mmseg\.datasets\.transforms\.loading'),
    (r'The draw is False, it means that the hook for visualization will not take effect',
     r'mmseg\.engine\.hooks\.visualization_hook'),
    (r"Failed to add <class 'mmengine\.visualization\.vis_backend\.LocalVisBackend'>, please provide the `save_dir`",
     r'mmengine\.visualization\.visualizer'),
    # mmseg's SegTTAModel hands 2-D maps to PixelData, which adds the channel axis itself
    (r'The shape of value will convert from', r'mmengine\.structures\.pixel_data'),
)


def quiet_third_party_warnings() -> None:
    """Hide the deprecation and advice warnings of mmengine/mmseg listed in ``THIRD_PARTY_NOISE``, nothing else."""
    for message, module in THIRD_PARTY_NOISE:
        warnings.filterwarnings('ignore', message=message, category=UserWarning, module=module)


def run_with_stand_in(argv: list) -> None:
    """Run a script or module as ``python`` would, after installing the stand-in and hiding the listed warnings.

    Args:
        argv: ``[SCRIPT, ARGS...]`` or ``['-m', MODULE, ARGS...]``; it becomes the program's ``sys.argv``.

    Raises:
        SystemExit: With the usage line when ``argv`` names no script or module.
    """
    usage = 'usage: python mmcv_lite.py SCRIPT.py [ARGS...]  or  python mmcv_lite.py -m MODULE [ARGS...]'
    if not argv or argv[0] == '-m' and len(argv) < 2:
        raise SystemExit(usage)
    quiet_third_party_warnings()
    ensure_mmcv_ops_importable()
    # `python mmcv_lite.py` put this file's folder first on sys.path; python itself would put the script's (or, for
    # -m, the working) folder there, and snella_seg's subpackages must not shadow top-level names like `datasets`.
    if sys.path and os.path.abspath(sys.path[0] or '.') == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = os.getcwd() if argv[0] == '-m' else os.path.dirname(os.path.abspath(argv[0]))
    if argv[0] == '-m':
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name='__main__')


if __name__ == '__main__':
    run_with_stand_in(sys.argv[1:])
