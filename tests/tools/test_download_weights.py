"""tools/download_weights.py: the zoo's backbones from their publishers' paths, verified, under the configs' names;
then tools/train.py runs on them and on data made by tools/prepare_data.py."""
import glob
import os.path as osp
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS
from safetensors.torch import save_file

from snella_seg.apis.weights import WEIGHTS
from snella_seg.utils.fetch import read_manifest
from tests.helpers import dataset_archives as archives
from tests.helpers.file_server import serve_files
from tests.helpers.paths import REPO, SHIPPED_CONFIGS
from tests.helpers.tools import run_tool

VIT_B_PATH = '/timm/vit_base_patch16_224.augreg2_in21k_ft_in1k/resolve/main/model.safetensors'
SAM_B_PATH = '/segment_anything/sam_vit_b_01ec64.pth'


def _tool(monkeypatch, *args: str) -> int:
    with pytest.raises(SystemExit) as exit_code:
        run_tool(monkeypatch, 'download_weights.py', *args)
    return exit_code.value.code


def test_the_catalogue_holds_every_pretrained_file_the_configs_read():
    read = {name for path in SHIPPED_CONFIGS
            for name in re.findall(r"pretrained='checkpoints/([^']+)'", Path(path).read_text())}
    assert read == {weights.file_name for weights in WEIGHTS}


def test_list_names_every_backbone_with_its_licence_and_source(monkeypatch, capsys):
    assert _tool(monkeypatch, '--list') == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + len(WEIGHTS)
    assert any(line.startswith('dinov3-l') and 'gated: https://ai.meta.com/' in line for line in lines)
    assert any(line.startswith('sam-h') and 'md5:4b8939' in line and 'Apache-2.0' in line for line in lines)


def test_weights_download_from_the_publishers_paths_into_checkpoints(tmp_path, monkeypatch, capsys):
    with serve_files({VIT_B_PATH: b'stand-in safetensors'}) as server:
        monkeypatch.chdir(tmp_path)
        assert _tool(monkeypatch, 'vit-b', '--mirror', server.url, '--no-progress') == 0

    target = tmp_path / 'checkpoints' / 'vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors'
    assert target.read_bytes() == b'stand-in safetensors'
    assert set(read_manifest(target.parent)) == {target.name}
    assert capsys.readouterr().out.strip() == str(osp.join('checkpoints', target.name))


def test_a_file_whose_md5_disagrees_with_its_name_is_refused_and_removed(tmp_path, monkeypatch, capsys):
    with serve_files({SAM_B_PATH: b'not the SAM ViT-B checkpoint'}) as server:
        assert _tool(monkeypatch, 'sam-b', '--dir', str(tmp_path), '--mirror', server.url, '--no-progress') == 1

    assert 'sam_vit_b_01ec64.pth: md5 is' in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_gated_release_says_where_to_ask_for_it_and_where_to_put_it(tmp_path, monkeypatch, capsys):
    assert _tool(monkeypatch, 'dinov3-l', '--dir', str(tmp_path)) == 1

    error = capsys.readouterr().err
    assert 'https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/' in error
    assert str(tmp_path / 'dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth') in error
    assert len(error.strip().splitlines()) == 1


def test_a_gated_file_put_in_place_is_checked_against_the_hash_in_its_name(tmp_path, monkeypatch, capsys):
    (tmp_path / 'dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth').write_bytes(b'some other file')

    assert _tool(monkeypatch, 'dinov3-l', '--dir', str(tmp_path)) == 1

    error = capsys.readouterr().err
    assert 'dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth: sha256 is' in error and 'expected 8aa4cbdd...' in error


def test_an_unknown_name_lists_the_known_ones(monkeypatch, capsys):
    assert _tool(monkeypatch, 'vit-z') == 2
    assert 'known: vit-b, vit-l, sam-b' in capsys.readouterr().err


TINY_OVERRIDES = """
crop_size = (64, 64)
pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='Resize', scale=crop_size, keep_ratio=False), dict(type='PackSegInputs')]
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(backbone=dict(
        arch=dict(_delete_=True, family='vit', embed_dim=32, depth=4, num_heads=2, patch_size=8), img_size=64,
        out_indices=(0, 1, 2, 3)), snella=dict(rank=4)),
    neck=dict(in_channels=[32] * 4, out_channels=32),
    decode_head=dict(in_channels=[32] * 4, channels=16),
    auxiliary_head=dict(in_channels=32, channels=16))
loader = dict(batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(pipeline=pipeline))
train_dataloader = loader
val_dataloader = loader
test_dataloader = loader
"""


def _tiny_vit_safetensors(config: str) -> bytes:
    """The stand-in for the published ViT-B file: the tiny arch's timm state dict as safetensors."""
    backbone = Config.fromfile(config).model.backbone.backbone
    backbone.pretrained = None
    state = {key: value.contiguous() for key, value in MODELS.build(backbone).model.state_dict().items()}
    path = osp.join(osp.dirname(config), 'standin.safetensors')
    save_file(state, path)
    with open(path, 'rb') as stream:
        return stream.read()


def test_train_runs_on_prepared_data_and_downloaded_weights(tmp_path, monkeypatch):
    config = tmp_path / 'snella_vit-b_ade20k_tiny.py'
    config.write_text(f"_base_ = ['{REPO}/configs/snella_vit-b_ade20k.py']\n{TINY_OVERRIDES}")
    torch.manual_seed(0)
    files = {VIT_B_PATH: _tiny_vit_safetensors(str(config)),
             archives.ADE_PATH: archives.ade20k_zip(tmp_path / 'scratch')}
    monkeypatch.chdir(tmp_path)
    with serve_files(files) as server:
        assert _tool(monkeypatch, 'vit-b', '--mirror', server.url, '--no-progress') == 0
        with pytest.raises(SystemExit) as prepared:
            run_tool(monkeypatch, 'prepare_data.py', 'ade20k', '--mirror', server.url, '--no-progress')
    assert prepared.value.code == 0

    run_tool(monkeypatch, 'train.py', str(config), '--work-dir', 'work', '--cfg-options', 'train_cfg.max_iters=2',
             'default_hooks.checkpoint.interval=2')

    assert glob.glob(str(tmp_path / 'work' / 'iter_2.pth'))


def test_the_readme_table_names_every_backbone_with_its_licence_and_access():
    """The README's table of downloadable backbones stays the catalogue's: name, licence, gated or open."""
    readme = (Path(REPO) / 'README.md').read_text('utf-8')
    section = readme.split('## Pretrained weights and data sets\n', 1)[1].split('\n## ', 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip('|').split('|')]
        if len(cells) == 4 and cells[0].startswith('`'):
            for name in re.findall(r'`([^`]+)`', cells[0]):
                rows[name] = cells
    assert set(rows) == {w.name for w in WEIGHTS}
    for weights in WEIGHTS:
        _, _, licence, access = rows[weights.name]
        assert licence == weights.licence and access.startswith('gated') == weights.gated, weights.name


def test_the_checkpoints_page_gives_every_file_its_source_and_licence():
    page = (Path(REPO) / 'docs' / 'checkpoints.md').read_text('utf-8')
    rows = {cells[0].strip('`'): cells for cells in
            ([c.strip() for c in line.strip('|').split('|')] for line in page.splitlines() if line.startswith('| `'))
            if len(cells) == 4}
    for weights in WEIGHTS:
        _, file_name, source, licence = rows[weights.name]
        assert file_name == f'`{weights.file_name}`' and licence == weights.licence, weights.name
        assert source == (weights.url or f'gated: request access at {weights.access_url}'), weights.name
