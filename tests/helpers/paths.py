"""Where the repository and its shipped configs are, for tests in any folder."""
import glob
import os.path as osp

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'snella_vit-tiny_demo-ade20k.py')
SHIPPED_CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                         if '_base_' not in p)
