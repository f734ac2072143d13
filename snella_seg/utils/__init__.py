"""Utilities below every other layer.

Weights-only checkpoint loading (``checkpoint_loading``) and the mmcv-lite stand-in (``mmcv_lite``, standard library
only, runnable by path). Import the submodules themselves: importing this package imports neither, so ``mmcv_lite``
can run before mmengine is imported.
"""
