"""Let mmsegmentation import on the pure-Python ``mmcv-lite``.

mmseg imports ``mmcv.ops`` at import time, which needs the compiled ``mmcv._ext``. When that module is absent we
register a stand-in whose attributes raise a clear error only when a compiled op is actually called; SNELLA and
every component our configs use (ViT/SAM backbones, UperNet, FCN heads, data transforms, IoUMetric) need none.
A real compiled mmcv is used untouched.
"""
import importlib.machinery
import importlib.util
import sys
import types


class _MissingCompiledOps(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(
                f'mmcv compiled op {name!r} is not available: this environment has the pure-Python mmcv-lite. '
                'Install a compiled mmcv 2.1.0 (see README, "Compiled mmcv") to use models that need it.')
        return unavailable


def ensure_mmcv_ops_importable() -> bool:
    """Install the stand-in if needed; returns True when the real compiled ops are present."""
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
