"""The backbones' one rule for pretrained weights: read from a local file in ``init_weights``, never in ``__init__``.

So building a model (for a merged checkpoint, on the meta device) reads nothing.
"""
from mmengine.model import BaseModule


class PretrainedFileBackbone(BaseModule):
    """A backbone that loads ``self.pretrained`` (a local path, or None) with its own ``load_pretrained``."""

    pretrained = None

    def init_weights(self) -> None:
        """Load ``pretrained``; without it, timm's construction-time init stands (plus ``init_cfg``, if any)."""
        if self.pretrained:
            self.load_pretrained(self.pretrained)
            self._is_init = True
        elif self.init_cfg:
            super().init_weights()

    def load_pretrained(self, path: str) -> None:
        """Read the pretrained weights at ``path`` into the model; each backbone says how.

        Args:
            path: A local checkpoint file.

        Raises:
            NotImplementedError: If the subclass does not override it.
        """
        raise NotImplementedError(f'{type(self).__name__} must say how it reads a pretrained file')
