"""Peak GPU training memory of configs, estimated on any machine: prints a table, writes JSON (--out).

Example: python tools/analysis/estimate_memory.py configs/snella_vit-l_ade20k.py configs/baselines/full_vit-l_ade20k.py
"""
from snella_seg.analysis.memory_estimate import main

if __name__ == '__main__':
    main()
