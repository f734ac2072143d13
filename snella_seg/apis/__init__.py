from .inference import predict_overlays
from .runner import enable_amp, load_config, test, train

__all__ = ['enable_amp', 'load_config', 'predict_overlays', 'test', 'train']
