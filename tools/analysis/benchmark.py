"""Memory/speed of SNELLA vs LoRA, full and mask-based sparse tuning: prints a table, writes JSON (--out).

Example: python tools/analysis/benchmark.py --crop 512 --batch 2 --out benchmark.json
"""
from snella_seg.analysis.benchmark import main

if __name__ == '__main__':
    main()
