"""snella-seg: SNELLA sparse kernelized fine-tuning for mmsegmentation.

``snella_seg.snella`` is the pure-PyTorch method (no side effects on import). ``import snella_seg`` (which every
shipped config does through ``custom_imports``) changes the process beyond defining names:

* **mmcv stand-in** (``utils/mmcv_lite.py``, ``ensure_mmcv_ops_importable``): when the compiled ``mmcv._ext`` is
  absent (the pure-Python mmcv-lite), a module of that name is put in ``sys.modules`` whose ops raise a clear error
  only if called, so that mmseg, which imports ``mmcv.ops`` at import time, can be imported. A compiled mmcv is
  untouched.
* **Checkpoint loading** (``utils/checkpoint_loading.py``): mmengine's ``CheckpointLoader`` scheme for local
  files (prefix ``''``) is replaced, with ``force=True``, by a weights-only ``torch.load`` that allows exactly the
  classes mmengine's own checkpoints hold and also reads ``.safetensors``. It applies process-wide to ``load_from``,
  ``--resume``, ``init_cfg=dict(type='Pretrained')`` and ``mmengine.runner.load_checkpoint``; a file that needs
  full unpickling is refused (``UnsafeCheckpointError``) instead of loaded, unless torch's
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (then loaded fully, with a warning).
* **Warning filters** (``mmcv_lite.quiet_third_party_warnings``): ``warnings.filterwarnings('ignore', ...)`` for the
  deprecation and advice warnings of mmengine/mmseg listed in ``mmcv_lite.THIRD_PARTY_NOISE``, each matched by its
  message and the module raising it; the same text from anywhere else still shows. (``apis/console.py`` filters only
  the console of runners it builds, not at import.)
* **Config scope** (``utils/config_scope.py``): ``_base_`` entries of mmengine configs may name the project's
  configs as ``snella_seg::PATH`` (read from ``snella_seg/.mim/configs``), so a user's config anywhere on disk
  composes the project's bases; mmengine's ``Config._get_cfg_path`` is extended for that prefix only. Import
  ``snella_seg`` before ``Config.fromfile`` of such a config (a config's ``custom_imports`` run too late for its
  ``_base_``).
* **Matplotlib backend**: ``engine/hooks/allocation_plot.py`` selects the non-interactive ``Agg`` backend.
* **Registries** (mmsegmentation's): ``TimmViT``, ``TimmHiera``, ``SNELLABackbone``, ``PEFTBackbone`` (``MODELS``);
  ``SNELLAAllocatorHook``, ``AdaLoRAHook``, ``RNGStateHook``, ``FiniteTrainingHook``, ``ResumeCompatibilityHook``,
  ``RankZeroBuffersHook`` (``HOOKS``); ``SNELLAOptimWrapperConstructor`` (``OPTIM_WRAPPER_CONSTRUCTORS``),
  ``GuardedAmpOptimWrapper``, ``CPUAmpOptimWrapper`` (``OPTIM_WRAPPERS``), ``WarmupPolyLR`` (``PARAM_SCHEDULERS``),
  ``PresentClassIoUMetric`` (``METRICS``), ``KvasirSEGDataset``
  (``DATASETS``), ``LoadBinaryMask`` (``TRANSFORMS``).

Layers, each importing only those below it (``tests/test_layering.py``): ``snella`` (the method, pure PyTorch) and
``utils``; ``methods`` (the other parameter-efficient methods, pure PyTorch, which may use ``snella``); ``models`` and
``datasets``, ``evaluation``; ``engine`` (hooks, optimizers, schedulers); ``apis`` and ``deploy``, which ``tools/``
call. The measurement and verification tools (benchmark, memory estimate, step profile, GPU check) are not part of
the package: they live in ``tools/analysis/``.
"""
from .utils.config_scope import register_config_scope
from .utils.mmcv_lite import ensure_mmcv_ops_importable, quiet_third_party_warnings

quiet_third_party_warnings()
ensure_mmcv_ops_importable()
register_config_scope()

from .utils import checkpoint_loading  # noqa: E402,F401  (replaces mmengine's local checkpoint loader)
from . import engine, evaluation, models, snella  # noqa: E402,F401
from .datasets import kvasir  # noqa: E402,F401  (registers KvasirSEGDataset, LoadBinaryMask)

__version__ = '0.1.0'
