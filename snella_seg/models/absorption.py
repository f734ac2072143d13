"""Where SNELLA layers may compute the frozen module before them (see ``snella.absorb_activation``).

These are the pieces the backbone families' rules are made of.

Absorbing is exact only where that module's output feeds the layer and nothing else, which depends on each
architecture's forward code: each family's rule (``ModelType.absorption_rules`` in
``snella_seg/models/backbones/families/``) names the timm block whose forward was read and checks the settings that
keep it true (no dropout or norm between the MLP activation and fc2, no gate beside qkv, no window padding between
SAM's norm1 and qkv). Anything else is left alone.
"""
from typing import List

from timm.layers import Mlp
from torch import nn

from ..snella import SNELLALinear, absorb_activation


def does_nothing(module: nn.Module) -> bool:
    """Whether a module passes its input on unchanged (Identity, or Dropout with p=0).

    Args:
        module: Any module.

    Returns:
        True for an Identity or a Dropout that drops nothing.
    """
    return isinstance(module, nn.Identity) or (isinstance(module, nn.Dropout) and module.p == 0)


def adapted(layer: nn.Module) -> bool:
    """Whether a layer is a SNELLA layer that computes no frozen module yet.

    Args:
        layer: Any module.

    Returns:
        True for a ``SNELLALinear`` without an absorbed module.
    """
    return isinstance(layer, SNELLALinear) and layer.absorbed is None


def absorb_into_qkv(norm: nn.Module, qkv: nn.Module) -> List[str]:
    """Let an adapted qkv compute the norm before it; the caller has checked the norm feeds qkv alone.

    Args:
        norm: The block's ``norm1``.
        qkv: The attention's fused qkv Linear.

    Returns:
        ['norm1'] if absorbed, else [].
    """
    if not adapted(qkv):
        return []
    absorb_activation(norm, qkv)
    return ['norm1']


def absorb_into_mlp(norm: nn.Module, mlp: nn.Module) -> List[str]:
    """Absorb the norm before timm's Mlp into fc1, and its activation into fc2 where nothing lies between.

    timm's Mlp runs fc1 -> act -> drop1 -> norm -> fc2 -> drop2; its input is used by fc1 only.

    Args:
        norm: The block's ``norm2``, whose output is the MLP's input.
        mlp: The block's ``mlp``; anything but an exact ``timm.layers.Mlp`` is left alone.

    Returns:
        The absorbed modules' names inside the block ('norm2', 'mlp.act').
    """
    if type(mlp) is not Mlp:
        return []
    changed = []
    if adapted(mlp.fc1):
        absorb_activation(norm, mlp.fc1)
        changed.append('norm2')
    if adapted(mlp.fc2) and does_nothing(mlp.drop1) and does_nothing(mlp.norm):
        absorb_activation(mlp.act, mlp.fc2)
        changed.append('mlp.act')
    return changed
