"""Commit subjects stay at most 72 characters (the why goes in the body), from the commit that set the rule on."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The last commit before the rule: subjects after it are checked.
RULE_SINCE = '34f6fbd'
MAX_SUBJECT = 72


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['git', '-C', str(REPO), *args], capture_output=True, text=True, timeout=60)


def test_commit_subjects_fit_in_72_characters():
    if shutil.which('git') is None or _git('rev-parse', '--verify', '--quiet', f'{RULE_SINCE}^{{commit}}').returncode:
        pytest.skip('no git history here (an unpacked release or a shallow clone)')
    subjects = _git('log', '--format=%h %s', f'{RULE_SINCE}..HEAD').stdout.splitlines()
    long = [line for line in subjects if len(line.split(' ', 1)[1]) > MAX_SUBJECT]
    assert long == [], f'commit subjects over {MAX_SUBJECT} characters (put the why in the body)'
