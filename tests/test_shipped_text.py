"""What ships speaks of the project only: no issue numbers of its tracker and no narration of work sessions."""
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

from tests.helpers.paths import REPO

SHIPPED = ('snella_seg', 'tools', 'configs', 'docs', 'README.md', 'setup.py', 'requirements.txt', 'tests/README.md')
# An issue of this project's tracker ('issue 14', "Issue 6's", 'issues 13', 'issue #13', a bare '#13' that no
# repository name precedes: 'pytorch/pytorch#75599' is an upstream bug, fine) and a work session ('this session',
# "one session's", 'work session', 'this round'); pytest's 'session-scoped' fixtures are not sessions of work.
PROJECT_REFERENCE = re.compile(
    r"\bissues?\s+#?\d+"
    r"|(?<![\w/.#-])#\d{1,4}\b"
    r"|\b(?:this|that|these|those|one|earlier|previous|last|next|later|work|working)\s+sessions?\b"
    r"|\bproject's\s+sessions?\b"
    r"|\bthis\s+round\b",
    re.IGNORECASE)


def shipped_files(root: Path) -> List[Path]:
    """The text files under ``root``'s SHIPPED paths: in a git checkout those tracked or not ignored."""
    listing = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard', '--', *SHIPPED],
                             cwd=root, capture_output=True, text=True)
    if listing.returncode == 0 and listing.stdout:
        paths = [root / name for name in listing.stdout.split('\0') if name]
    else:
        paths = [path for name in SHIPPED for path in ([root / name] if (root / name).is_file()
                                                       else (root / name).rglob('*'))]
    return sorted(path for path in paths if path.is_file() and '__pycache__' not in path.parts)


def project_references(path: Path, root: Path) -> Iterator[str]:
    """``file:line: text`` of every line of ``path`` that names an issue or a work session."""
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError:  # images and other binary files
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if PROJECT_REFERENCE.search(line):
            yield f'{path.relative_to(root)}:{number}: {line.strip()}'


def test_nothing_shipped_names_an_issue_or_a_work_session():
    root = Path(REPO)
    found = [hit for path in shipped_files(root) for hit in project_references(path, root)]
    assert not found, 'shipped files name issues or work sessions:\n' + '\n'.join(found)


@pytest.mark.parametrize('line', [
    '# The GPU check (issue 14): one command', "## 3. Reading against Issue 6's targets", 'see issues 13 and 14',
    'fixed in issue #13', 'as reported in #13.', '(#7)', 'measured in this session', "one session's four runs",
    'No GPU has been lent to this project\'s sessions.', 'over several work sessions', "this round's changes",
])
def test_a_planted_reference_is_found_with_its_file_and_line(tmp_path, line):
    planted = tmp_path / 'docs' / 'planted.md'
    planted.parent.mkdir()
    planted.write_text(f'A first line.\n{line}\n', encoding='utf-8')
    assert list(project_references(planted, tmp_path)) == [f'{os.path.join("docs", "planted.md")}:2: {line}']


@pytest.mark.parametrize('line', [
    '(pytorch/pytorch#75599 measured it 20x slower than a full sort)', 'session-scoped, made once per run',
    "@pytest.fixture(scope='session')", 'Patch-14 configs round the position grid up', "color='#1f77b4'",
    "palette = ['#120120', '#ffffff']", 'round after round until all of it is placed', '## 3. Reading the table',
    '[ $# -ge 1 ] && [ "${1#-}" = "$1" ]', 'an issue of mmcv 2.1 on numpy 2', 'session = ort.InferenceSession(path)',
])
def test_project_neutral_text_is_not_a_reference(tmp_path, line):
    path = tmp_path / 'neutral.py'
    path.write_text(line + '\n', encoding='utf-8')
    assert list(project_references(path, tmp_path)) == []


def test_the_shipped_paths_are_scanned():
    names = {path.relative_to(REPO).as_posix() for path in shipped_files(Path(REPO))}
    for expected in ('README.md', 'setup.py', 'tests/README.md', 'snella_seg/__init__.py',
                     'tools/analysis/gpu_check.sh', 'docs/benchmark.md'):
        assert expected in names
    assert not any(name.startswith('tests/') and name != 'tests/README.md' for name in names)
