# mmseg's own ADE20K settings (512x512 crops, 150 classes); data_root is relative: link your copy to data/ade.
_base_ = 'mmseg::_base_/datasets/ade20k.py'
