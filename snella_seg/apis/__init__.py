"""What the command-line tools call, for use from Python: config loading, training, testing and overlays."""
from .inference import init_model, predict_overlays
from .runner import enable_amp, load_config, test, train

__all__ = ['enable_amp', 'init_model', 'load_config', 'predict_overlays', 'test', 'train']
