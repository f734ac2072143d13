"""docs/custom_dataset.md works as written: its rehearsal commands run in order, on generated images of odd sizes.

The commands are read from the page itself (the code blocks under a ``*rehearsal*`` line), so the tutorial and
this test cannot drift apart. They run in a scratch folder that looks like the repository root to them.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from snella_seg.datasets.demo_data import make_custom_like

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / 'docs' / 'custom_dataset.md'
BLOCK = re.compile(r'^\*rehearsal(?P<lines>: config lines)?\*\n```(?P<language>\w+)\n(?P<body>.*?)\n```', re.M | re.S)


def rehearsal_blocks():
    """(kind, text) of each block marked for the rehearsal: 'command' lines or 'config' lines."""
    return [('config' if m['lines'] else 'command', m['body']) for m in BLOCK.finditer(TUTORIAL.read_text())]


def apply_config_lines(config: Path, lines: str) -> None:
    """Replace each line of ``config`` that assigns the same names as a tutorial line (the template's EDIT lines)."""
    text = config.read_text()
    for line in lines.splitlines():
        target = line.split('=', 1)[0].strip()
        pattern = re.compile(rf'^{re.escape(target)} =.*$', re.M)
        assert pattern.search(text), f'the template has no line assigning {target!r}'
        text = pattern.sub(lambda _: line, text, count=1)
    config.write_text(text)


def test_the_tutorial_marks_every_step_of_the_rehearsal():
    commands = [text for kind, text in rehearsal_blocks() if kind == 'command']
    assert [shlex.split(c)[1] for c in commands] == [
        'tools/make_demo_data.py', 'configs/custom/snella_vit-b_my-dataset.py', 'tools/train.py', 'tools/test.py',
        'tools/demo.py']


def test_the_tutorial_rehearsal_trains_evaluates_and_draws_overlays_on_odd_sized_images(tmp_path):
    shutil.copytree(REPO / 'configs', tmp_path / 'configs')
    (tmp_path / 'tools').symlink_to(REPO / 'tools')
    # this checkout's package, not whichever copy the environment has installed
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    outputs = []
    for kind, text in rehearsal_blocks():
        if kind == 'config':
            apply_config_lines(tmp_path / 'configs' / 'custom' / 'my_dataset.py', text)
            continue
        for command in text.splitlines():
            if command.startswith('python '):
                command = shlex.quote(sys.executable) + command[len('python'):]
            result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=900)
            assert result.returncode == 0, f'{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
            outputs.append(result.stdout + result.stderr)

    sizes = {cv2.imread(str(p)).shape[:2] for p in (tmp_path / 'data' / 'my_dataset' / 'img_dir').rglob('*.jpg')}
    assert len(sizes) > 1 and all(h % 2 and w % 2 for h, w in sizes)  # odd sides: no patch size divides them
    work_dir = tmp_path / 'work_dirs' / 'my_dataset_cpu'
    assert (work_dir / 'iter_100.pth').is_file() and (work_dir / 'snella_allocation.png').is_file()
    test_output = outputs[-2]
    miou = float(re.search(r'mIoU: ([\d.]+)', test_output).group(1))
    assert 0 < miou <= 100
    overlays = list((work_dir / 'overlays').rglob('*.png'))
    predictions = sorted(p.name for p in (work_dir / 'predictions').glob('*.png'))
    assert len(overlays) == 6 and predictions == [f'val_{i:04d}.png' for i in range(1, 7)]


def test_a_copy_of_the_templates_outside_the_repository_trains(tmp_path):
    """The templates take the project's bases through ``snella_seg::``, so copies in a folder of the user's own,
    trained from there with the tools given by absolute path, compose them as they do inside the clone."""
    configs = tmp_path / 'my_configs'
    configs.mkdir()
    shutil.copy(REPO / 'configs' / 'custom' / 'snella_vit-b_my-dataset.py', configs / 'my_dataset.py')
    rehearsal = (REPO / 'configs' / 'custom' / 'snella_vit-tiny_my-dataset.py').read_text()
    (configs / 'my_dataset_cpu.py').write_text(rehearsal.replace('./snella_vit-b_my-dataset.py', './my_dataset.py'))
    for lines in (text for kind, text in rehearsal_blocks() if kind == 'config'):
        apply_config_lines(configs / 'my_dataset.py', lines)
    make_custom_like(str(tmp_path / 'data' / 'my_dataset'), num_train=4, num_val=2, size=64)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    result = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'train.py'), 'my_configs/my_dataset_cpu.py', '--work-dir', 'run',
         '--cfg-options', 'train_cfg.max_iters=2'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    assert (tmp_path / 'run' / 'iter_2.pth').is_file()


@pytest.mark.parametrize('template', ['snella_vit-b_my-dataset.py', 'snella_vit-tiny_my-dataset.py'])
def test_the_edit_lines_the_tutorial_names_are_in_the_template(template):
    text = (REPO / 'configs' / 'custom' / template).read_text()
    assert '# EDIT' in text
    if template == 'snella_vit-b_my-dataset.py':
        for _, lines in (b for b in rehearsal_blocks() if b[0] == 'config'):
            for line in lines.splitlines():
                assert re.search(rf'^{re.escape(line.split("=", 1)[0].strip())} = .*# EDIT', text, re.M), line


def test_the_rehearsal_tests_with_tta_at_its_own_scale():
    """--tta on the CPU rehearsal resizes around its own 128 px test scale, not the template's 512 px ones (which
    took tens of seconds per image), by the template's ratios and with its flips."""
    from mmengine.config import Config
    template = Config.fromfile(str(REPO / 'configs' / 'custom' / 'snella_vit-b_my-dataset.py'))
    rehearsal = Config.fromfile(str(REPO / 'configs' / 'custom' / 'snella_vit-tiny_my-dataset.py'))
    test_scale = next(t['scale'] for t in rehearsal.test_pipeline if t['type'] == 'Resize')
    augment = next(t for t in rehearsal.tta_pipeline if t['type'] == 'TestTimeAug')
    assert [r['scale'] for r in augment['transforms'][0]] == [
        (int(test_scale[0] * ratio), int(test_scale[1] * ratio)) for ratio in template.img_ratios]
    template_augment = next(t for t in template.tta_pipeline if t['type'] == 'TestTimeAug')
    assert augment['transforms'][1:] == template_augment['transforms'][1:]
