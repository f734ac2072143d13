"""``snella_seg::`` bases: a config anywhere on disk composes the project's configs, as a relative base would."""
import os.path as osp

import pytest
from mmengine.config import Config

import snella_seg  # noqa: F401  (registers the snella_seg:: prefix)
from snella_seg.utils.config_scope import CONFIGS_DIR

from tests.helpers.paths import REPO


def test_the_package_carries_the_repository_configs():
    for name in ('_base_/schedules/snella_80k.py', 'custom/snella_vit-b_my-dataset.py'):
        with open(osp.join(REPO, 'configs', name)) as shipped, open(osp.join(CONFIGS_DIR, name)) as packaged:
            assert packaged.read() == shipped.read()


def test_a_scoped_base_composes_like_the_file_itself_without_a_registry_scope(tmp_path):
    scoped, direct = tmp_path / 'scoped.py', tmp_path / 'direct.py'
    scoped.write_text("_base_ = ['snella_seg::_base_/models/upernet_snella_vit.py']\n")
    direct.write_text(f"_base_ = [{osp.join(REPO, 'configs', '_base_', 'models', 'upernet_snella_vit.py')!r}]\n")
    expected = Config.fromfile(str(direct)).to_dict()
    assert Config.fromfile(str(scoped)).to_dict() == expected
    assert '_scope_' not in str(expected)


def test_a_missing_scoped_base_names_the_configs_folder(tmp_path):
    config = tmp_path / 'config.py'
    config.write_text("_base_ = ['snella_seg::_base_/no_such.py']\n")
    with pytest.raises(FileNotFoundError, match='snella_seg::_base_/no_such.py: no such config'):
        Config.fromfile(str(config))
