"""``snella_seg::`` in a config's ``_base_``: the project's configs, from a config anywhere on disk.

A user's copy of a template lives outside the repository, so ``../_base_/...`` cannot reach the project's bases.
``_base_ = ['snella_seg::_base_/models/upernet_snella_vit.py']`` names them the way ``mmseg::`` names mmseg's: they
are read from ``snella_seg/.mim/configs`` of the imported package (a link to the repository's ``configs/`` in a
clone or editable install, real copies in a wheel).

mmengine's own ``pkg::`` lookup (its ``MODULE2PACKAGE`` table) does not fit: it finds the package through its pip
distribution, which misses editable installs and a clone on ``PYTHONPATH`` that shadows an installed copy, and it
gives the bases the scope ``snella_seg``, a registry scope that does not exist (the project registers into mmseg's
registries), so their models fail to build. ``register_config_scope`` therefore extends ``Config._get_cfg_path``,
the one place mmengine resolves a base path, for this prefix only: the bases compose as if they sat beside the
file, without a scope of their own; every other path resolves as before.
"""
import os.path as osp
from typing import Optional, Tuple

from mmengine.config import Config

SCOPE = 'snella_seg'
CONFIGS_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim', 'configs')


def project_config_path(relative_path: str) -> str:
    """The file a ``snella_seg::RELATIVE_PATH`` base names.

    Args:
        relative_path: path under the project's ``configs/``, e.g. ``_base_/schedules/snella_80k.py``.

    Returns:
        Its absolute path in the imported package.

    Raises:
        FileNotFoundError: when the package holds no such config.
    """
    path = osp.join(CONFIGS_DIR, relative_path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{SCOPE}::{relative_path}: no such config in {CONFIGS_DIR}')
    return path


def register_config_scope() -> None:
    """Let ``_base_`` entries of mmengine configs name the project's configs as ``snella_seg::PATH``.

    Idempotent; configs parsed before ``import snella_seg`` cannot use the prefix.
    """
    resolve = Config._get_cfg_path
    if getattr(resolve, 'resolves_snella_seg_scope', False):
        return

    def get_cfg_path(cfg_path: str, filename: str) -> Tuple[str, Optional[str]]:
        scope, separator, relative_path = cfg_path.partition('::')
        if separator and scope == SCOPE:
            return project_config_path(relative_path), None
        return resolve(cfg_path, filename)

    get_cfg_path.resolves_snella_seg_scope = True
    Config._get_cfg_path = staticmethod(get_cfg_path)
