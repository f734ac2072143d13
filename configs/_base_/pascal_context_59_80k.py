# What a Pascal Context 59 config changes in its ADE20K sibling: the data (_base_/datasets/pascal_context_59.py),
# the 80k schedule (_base_/schedules/snella_80k.py) and the 59 classes of both heads.
# mmengine refuses two bases that set the same key, so this file holds all of it under the one key
# `pascal_context_59_80k`; a config lists it beside its ADE20K sibling and moves the key's contents to the top level:
#   _base_ = ['./snella_vit-b_ade20k.py', './_base_/pascal_context_59_80k.py']
#   globals().update(_base_.pop('pascal_context_59_80k'))
_base_ = ['./datasets/pascal_context_59.py', './schedules/snella_80k.py']
pascal_context_59_80k = dict(
    **_base_, model=dict(decode_head=dict(num_classes=59), auxiliary_head=dict(num_classes=59)))
_base_.clear()
