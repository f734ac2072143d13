"""Host syncs, operators and optimizer groups of one training step of configs: prints a table, writes JSON (--out).

Example: python tools/analysis/profile_step.py configs/snella_vit-l_ade20k.py --force-cuda-selection
"""
from snella_seg.analysis.step_profile import main

if __name__ == '__main__':
    main()
