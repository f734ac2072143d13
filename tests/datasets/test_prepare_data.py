"""tools/prepare_data.py: each data set from its publisher's archives to the layout its config reads, checked."""
import dataclasses

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmseg.datasets import PascalContextDataset59

from snella_seg.datasets.pascal_context import CONTEXT59_FROM_459, LABELS_459, convert_label_map
from snella_seg.datasets import prepare
from snella_seg.datasets.prepare import kvasir_split
from tests.helpers import dataset_archives as archives
from tests.helpers.file_server import serve_files
from tests.helpers.paths import REPO
from tests.helpers.tools import run_tool


def _config_paths(name: str):
    """(data_root, dataset) of a dataset base config's train loader."""
    dataset = Config.fromfile(f'{REPO}/configs/_base_/datasets/{name}.py').train_dataloader.dataset
    return dataset.data_root.rstrip('/'), dataset


def test_the_59_classes_are_mmsegs_names_at_their_places_in_the_459_class_list():
    assert len(LABELS_459) == 459
    assert [LABELS_459[index - 1] for index in CONTEXT59_FROM_459] == list(PascalContextDataset59.METAINFO['classes'])


def test_a_label_map_with_every_459_class_keeps_the_59_and_sends_the_rest_to_background():
    label_map = np.arange(0, 460).reshape(1, -1)

    converted = convert_label_map(label_map)[0]

    for position, index in enumerate(CONTEXT59_FROM_459, start=1):
        assert converted[index] == position, LABELS_459[index - 1]
    others = np.setdiff1d(np.arange(460), CONTEXT59_FROM_459)
    assert not converted[others].any()
    assert sorted(np.unique(converted)) == list(range(60))


def test_a_label_value_outside_the_459_classes_is_refused():
    with pytest.raises(ValueError, match='0..459'):
        convert_label_map(np.array([[460]]))


def test_ade20k_is_downloaded_unpacked_where_its_config_reads_and_checked(tmp_path, monkeypatch, capsys):
    data_root, _ = _config_paths('ade20k')
    with serve_files({archives.ADE_PATH: archives.ade20k_zip(tmp_path / 'scratch')}) as server:
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as exit_code:
            run_tool(monkeypatch, 'prepare_data.py', 'ade20k', '--mirror', server.url, '--no-progress')

    assert exit_code.value.code == 0
    assert sorted(p.name for p in (tmp_path / data_root / 'images' / 'training').iterdir()) != []
    assert 'images/training 4 samples, images/validation 2 samples' in capsys.readouterr().out
    assert (tmp_path / 'data' / 'downloads' / 'checksums.sha256').read_text().endswith('ADEChallengeData2016.zip\n')


def test_pascal_context_from_the_users_archives_becomes_mmsegs_59_class_layout(tmp_path, monkeypatch, capsys):
    voc, context = tmp_path / 'VOCtrainval_03-May-2010.tar', tmp_path / 'trainval.tar.gz'
    voc.write_bytes(archives.voc2010_tar())
    context.write_bytes(archives.context_trainval_tar_gz())
    monkeypatch.chdir(tmp_path)
    recipe = prepare.RECIPES['pascal-context-59']
    monkeypatch.setitem(prepare.RECIPES, recipe.name, _without_archive_hashes(recipe))

    with pytest.raises(SystemExit) as exit_code:
        run_tool(monkeypatch, 'prepare_data.py', 'pascal-context-59', '--from-archive', str(voc), str(context))

    assert exit_code.value.code == 0, capsys.readouterr().err
    data_root, dataset = _config_paths('pascal_context_59')
    root = tmp_path / data_root
    assert (root / dataset.ann_file).read_text().split() == archives.PASCAL_TRAIN  # the unlabelled image left out
    assert (root / 'ImageSets/SegmentationContext/val.txt').read_text().split() == archives.PASCAL_VAL
    label = cv2.imread(str(root / dataset.data_prefix.seg_map_path / '2008_000002.png'), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(label, convert_label_map(archives.label_map_459(seed=0)))
    assert 'train.txt 3 samples' in capsys.readouterr().out


def test_label_maps_of_another_class_list_are_refused(tmp_path, monkeypatch, capsys):
    voc, context = tmp_path / 'VOCtrainval_03-May-2010.tar', tmp_path / 'trainval.tar.gz'
    voc.write_bytes(archives.voc2010_tar())
    context.write_bytes(archives.context_trainval_tar_gz(labels=('background',) + LABELS_459[1:]))
    recipe = prepare.RECIPES['pascal-context-59']
    monkeypatch.setitem(prepare.RECIPES, recipe.name, _without_archive_hashes(recipe))

    with pytest.raises(SystemExit) as exit_code:
        run_tool(monkeypatch, 'prepare_data.py', 'pascal-context-59', '--root', str(tmp_path / 'data'),
                 '--from-archive', str(voc), str(context))

    assert exit_code.value.code == 1
    assert 'differ from the 459 of the PASCAL-Context release' in capsys.readouterr().err


def _without_archive_hashes(recipe: prepare.DatasetRecipe) -> prepare.DatasetRecipe:
    """The recipe without published archive hashes: stand-in archives cannot match the real ones."""
    return dataclasses.replace(recipe, archives=tuple(dataclasses.replace(archive, known_hash=None)
                                                      for archive in recipe.archives))


def test_an_archive_failing_its_published_hash_is_refused(tmp_path, monkeypatch, capsys):
    voc = tmp_path / 'VOCtrainval_03-May-2010.tar'
    voc.write_bytes(archives.voc2010_tar())
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as exit_code:
        run_tool(monkeypatch, 'prepare_data.py', 'pascal-context-59', '--from-archive', str(voc))

    assert exit_code.value.code == 1
    assert 'md5 is' in capsys.readouterr().err and not (tmp_path / 'data').exists()


def test_an_archive_of_another_name_is_refused_with_the_expected_names(tmp_path, monkeypatch, capsys):
    other = tmp_path / 'ade.zip'
    other.write_bytes(b'x')
    with pytest.raises(SystemExit) as exit_code:
        run_tool(monkeypatch, 'prepare_data.py', 'ade20k', '--from-archive', str(other), '--root', str(tmp_path))

    assert exit_code.value.code == 1
    assert 'expected: ADEChallengeData2016.zip' in capsys.readouterr().err


def test_kvasir_seg_gets_its_seeded_split_and_passes_the_check(tmp_path, monkeypatch, capsys):
    with serve_files({archives.KVASIR_PATH: archives.kvasir_zip(count=10)}) as server:
        with pytest.raises(SystemExit) as exit_code:
            run_tool(monkeypatch, 'prepare_data.py', 'kvasir-seg', '--root', str(tmp_path / 'data'),
                     '--mirror', server.url, '--no-progress')

    assert exit_code.value.code == 0, capsys.readouterr().err
    data_root, dataset = _config_paths('kvasir_seg')
    root = tmp_path / data_root
    train, val = (root / 'train.txt').read_text().split(), (root / 'val.txt').read_text().split()
    assert (train, val) == kvasir_split([f'cju{i:04d}' for i in range(10)])
    assert len(train) == 9 and len(val) == 1
    assert (root / dataset.data_prefix.img_path / f'{train[0]}.jpg').is_file()
    assert not (root.parent / 'Kvasir-SEG').exists()


def test_the_kvasir_split_is_880_120_and_fixed():
    ids = [f'cju{i:04d}' for i in range(1000)]

    train, val = kvasir_split(ids)

    assert (len(train), len(val)) == (880, 120) and not set(train) & set(val)
    assert kvasir_split(list(reversed(ids))) == (train, val)
    assert val[:3] == ['cju0003', 'cju0007', 'cju0021']  # the documented split stays the same
