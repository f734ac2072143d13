"""Where the repository and its shipped configs are, for tests in any folder."""
import glob
import os.path as osp
import subprocess
from typing import List

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'snella_vit-tiny_demo-ade20k.py')


def shipped_configs() -> List[str]:
    """Every config the repository ships (``_base_`` parts aside). In a git checkout only tracked files count: a
    user's own copy of the custom template (docs/custom_dataset.md puts it in configs/custom/) is not shipped."""
    found = glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
    listing = subprocess.run(['git', 'ls-files', '-z', 'configs'], cwd=REPO, capture_output=True, text=True)
    if listing.returncode == 0 and listing.stdout:
        tracked = {osp.join(REPO, path) for path in listing.stdout.split('\0') if path}
        found = [path for path in found if path in tracked]
    return sorted(path for path in found if '_base_' not in path)


SHIPPED_CONFIGS = shipped_configs()
