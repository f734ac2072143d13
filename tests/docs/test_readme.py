"""README.md is a user's guide that stays true: short lines, links that resolve, and a code map naming real paths.

The code map is where a contributor starts; a path it names that no longer exists sends them nowhere, so every
repository path in that section must exist (a moved module updates the map in the same change).
"""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / 'README.md'
PAGES = [README, *sorted((REPO / 'docs').glob('*.md')), REPO / 'configs' / 'README.md']
MAX_LINE = 120
LINK = re.compile(r'\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)')
# Files a page tells the user to create (the custom-dataset tutorial's copy of the template).
USER_FILES = {'configs/custom/my_dataset.py'}
REPO_PATH = re.compile(r'`(?P<path>(?:snella_seg|tools|configs|tests|docs)/[^`*\s]*)`')


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section of a Markdown text, up to the next ``## `` heading."""
    match = re.search(rf'^## {re.escape(title)}\n(?P<body>.*?)(?=^## |\Z)', text, re.M | re.S)
    assert match, f'no "## {title}" section'
    return match['body']


def test_readme_lines_fit_in_120_columns():
    long = [f'{number}: {len(line)}' for number, line in enumerate(README.read_text('utf-8').splitlines(), 1)
            if len(line) > MAX_LINE]
    assert long == [], f'README.md lines over {MAX_LINE} characters (line: length)'


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_resolve(page):
    targets = [m['target'] for m in LINK.finditer(page.read_text('utf-8')) if '://' not in m['target']]
    missing = [target for target in targets if not (page.parent / target).exists()]
    assert missing == [], f'{page.relative_to(REPO)} links to files that do not exist'


def test_every_path_in_the_code_map_exists():
    paths = [m['path'] for m in REPO_PATH.finditer(section(README.read_text('utf-8'), 'Code map'))]
    assert len(paths) >= 20, 'the code map names too few paths for this test to mean anything'
    missing = sorted({path for path in paths if not (REPO / path).exists()})
    assert missing == [], 'README.md code map names paths that do not exist'


def test_the_code_map_names_every_library_folder():
    """A new layer or subpackage is found from the map: each folder of the package is named in it."""
    named = {m['path'].rstrip('/') for m in REPO_PATH.finditer(section(README.read_text('utf-8'), 'Code map'))}
    folders = {str(p.parent.relative_to(REPO)) for p in (REPO / 'snella_seg').rglob('__init__.py')} - {'snella_seg'}
    unnamed = sorted(f for f in folders if not any(path == f or path.startswith(f + '/') for path in named))
    assert unnamed == [], 'README.md code map names nothing in these package folders'


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_repository_paths_named_in_the_docs_exist(page):
    """Docs name modules and tests by path: a move must carry them along (placeholders such as <name> excepted)."""
    paths = {m['path'] for m in REPO_PATH.finditer(page.read_text('utf-8')) if '<' not in m['path']} - USER_FILES
    missing = sorted(path for path in paths if not (REPO / path).exists())
    assert missing == [], f'{page.relative_to(REPO)} names repository paths that do not exist'
