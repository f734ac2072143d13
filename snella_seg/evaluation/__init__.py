"""Evaluation metrics registered in mmseg's ``METRICS``."""
from .metrics import PresentClassIoUMetric

__all__ = ['PresentClassIoUMetric']
