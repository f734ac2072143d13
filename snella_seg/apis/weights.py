"""The pretrained backbones of the model zoo: where each file comes from and how it is checked.

Each entry's ``file_name`` is the file the configs' ``pretrained=`` reads from ``checkpoints/``. Facts are the
publishers' own (download scripts, READMEs, hub pages); None where a publisher states nothing (no release here
publishes a full SHA-256 or an exact size). Checks, in order of strength: a hash the publisher put in the file
name (SAM: the first digits of the MD5; torch.hub names such as DINOv3's: the first digits of the SHA-256), the
manifest's record of the SHA-256 seen at download time, and the loader's strict key and shape check.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Optional, Tuple, Union

from ..utils.fetch import FetchError, fetch, torch_hub_hash, with_mirror

DEFAULT_DIR = 'checkpoints'
HF = 'https://huggingface.co'
META = 'https://dl.fbaipublicfiles.com'


@dataclass(frozen=True)
class PretrainedWeights:
    """One downloadable backbone checkpoint.

    Args:
        name: what ``tools/download_weights.py`` calls it.
        title: the backbone, for people.
        file_name: the file the configs read (under ``checkpoints/``).
        url: the official download, or None for a gated release.
        licence: the licence the publisher gives the weights.
        known_hash: ``alg:hex`` (hex may be a prefix), or None where the publisher states none.
        size_bytes: the size the publisher states, or None.
        access_url: for a gated release, where to ask for access.
        access: for a gated release, how to get the file and where to put it (``{path}`` is filled in).
    """

    name: str
    title: str
    file_name: str
    url: Optional[str]
    licence: str
    known_hash: Optional[str] = None
    size_bytes: Optional[int] = None
    access_url: Optional[str] = None
    access: Optional[str] = None

    @property
    def gated(self) -> bool:
        """Whether the publisher hands the file out only after a request (no URL here)."""
        return self.url is None


def _timm_hub(model: str) -> str:
    return f'{HF}/timm/{model}/resolve/main/model.safetensors'


DINOV3_FILE = 'dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth'
WEIGHTS = (
    PretrainedWeights('vit-b', 'ViT-B/16 AugReg2 (timm, ImageNet-21k then 1k)',
                      'vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors',
                      _timm_hub('vit_base_patch16_224.augreg2_in21k_ft_in1k'), 'Apache-2.0'),
    PretrainedWeights('vit-l', 'ViT-L/16 AugReg (timm, ImageNet-21k then 1k)',
                      'vit_large_patch16_224.augreg_in21k_ft_in1k.safetensors',
                      _timm_hub('vit_large_patch16_224.augreg_in21k_ft_in1k'), 'Apache-2.0'),
    # Segment Anything names each file after the first six hex digits of its MD5.
    PretrainedWeights('sam-b', 'SAM ViT-B (Meta, Segment Anything)', 'sam_vit_b_01ec64.pth',
                      f'{META}/segment_anything/sam_vit_b_01ec64.pth', 'Apache-2.0', 'md5:01ec64'),
    PretrainedWeights('sam-l', 'SAM ViT-L (Meta, Segment Anything)', 'sam_vit_l_0b3195.pth',
                      f'{META}/segment_anything/sam_vit_l_0b3195.pth', 'Apache-2.0', 'md5:0b3195'),
    PretrainedWeights('sam-h', 'SAM ViT-H (Meta, Segment Anything)', 'sam_vit_h_4b8939.pth',
                      f'{META}/segment_anything/sam_vit_h_4b8939.pth', 'Apache-2.0', 'md5:4b8939'),
    PretrainedWeights('sam2-hiera-l', 'SAM 2 Hiera-L (Meta, release 072824)', 'sam2_hiera_large.pt',
                      f'{META}/segment_anything_2/072824/sam2_hiera_large.pt', 'Apache-2.0'),
    PretrainedWeights('dinov2-l', 'DINOv2 ViT-L/14 (Meta, torch.hub release)', 'dinov2_vitl14_pretrain.pth',
                      f'{META}/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth', 'Apache-2.0'),
    PretrainedWeights('dinov3-l', 'DINOv3 ViT-L/16 LVD-1689M (Meta, gated)', DINOV3_FILE, None,
                      'DINOv3 License', torch_hub_hash(DINOV3_FILE),
                      access_url='https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/',
                      access='Meta hands out the DINOv3 weights after a request: fill in the form at {access_url} , '
                             f'download {DINOV3_FILE} from the links in the e-mail that follows, and put it at '
                             '{path} (then run this again to record its SHA-256).'),
    PretrainedWeights('eva02-l', 'EVA-02 L/14 MIM, Merged-38M (BAAI)', 'eva02_L_pt_m38m_p14.pt',
                      f'{HF}/Yuxin-CV/EVA-02/resolve/main/eva02/pt/eva02_L_pt_m38m_p14.pt', 'MIT'),
    # OpenCLIP's copy of OpenAI's ViT-L/14 (the visual.* layout the loader reads), on timm's hub page.
    PretrainedWeights('clip-l', 'CLIP ViT-L/14 (OpenAI weights, OpenCLIP layout)',
                      'vit_large_patch14_clip_224.openai.bin',
                      f'{HF}/timm/vit_large_patch14_clip_224.openai/resolve/main/open_clip_pytorch_model.bin', 'MIT'),
)


class GatedWeightsError(FetchError):
    """The release is gated: the message says where to ask for it and where to put the file."""


def find_weights(name: str) -> PretrainedWeights:
    """The catalogue entry of a backbone.

    Args:
        name: an entry's ``name`` or ``file_name``.

    Returns:
        The entry.

    Raises:
        KeyError: no entry has that name; the message lists the names.
    """
    for weights in WEIGHTS:
        if name in (weights.name, weights.file_name):
            return weights
    raise KeyError(f'no pretrained backbone called {name!r}; known: {", ".join(w.name for w in WEIGHTS)}')


def download_weights(names: Iterable[str], directory: Union[str, Path] = DEFAULT_DIR, mirror: Optional[str] = None,
                     progress: bool = True, retries: int = 2) -> List[Path]:
    """Download and verify backbones into ``directory`` under the names the configs read.

    Args:
        names: catalogue names (or file names).
        directory: where the files go.
        mirror: a server with the publishers' paths to use instead of their hosts.
        progress: show progress bars.
        retries: further tries, each resuming, after a failed connection.

    Returns:
        The paths of the files, in the order asked.

    Raises:
        KeyError: an unknown name.
        GatedWeightsError: a gated release whose file is not in ``directory`` yet.
        FetchError: a download failed its hash check.
    """
    entries = [find_weights(name) for name in names]
    paths = []
    for weights in entries:
        target = Path(directory) / weights.file_name
        if weights.gated and not target.exists():
            raise GatedWeightsError(f'{weights.title} is a gated release. ' + weights.access.format(
                path=target, access_url=weights.access_url))
        url = with_mirror(weights.url, mirror) if weights.url else ''
        paths.append(fetch(url, target, weights.known_hash, progress=progress, retries=retries))
    return paths


def catalogue_table() -> str:
    """The catalogue as a plain-text table for ``--list``.

    Returns:
        One header line and one line per backbone: name, file, licence, size, hash, and URL or access.
    """
    rows = [('NAME', 'FILE', 'LICENCE', 'SIZE', 'HASH', 'SOURCE')]
    for weights in WEIGHTS:
        size = f'{weights.size_bytes / 1e9:.2f} GB' if weights.size_bytes else '-'
        source = weights.url or f'gated: {weights.access_url}'
        rows.append((weights.name, weights.file_name, weights.licence, size, weights.known_hash or '-', source))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(row, widths)) + '  ' + row[-1]
                     for row in rows)


def _pretrained_paths(node: Any, key: str) -> Iterator[Tuple[str, str]]:
    """Yield (config key, path) of every local pretrained file a model config names."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and isinstance(node.get('checkpoint'), str):
            yield f'{key}.checkpoint', node['checkpoint']
        for name, value in node.items():
            if name == 'pretrained' and isinstance(value, str):
                yield f'{key}.{name}', value
            else:
                yield from _pretrained_paths(value, f'{key}.{name}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _pretrained_paths(value, f'{key}[{index}]')


def check_pretrained_files(model_cfg: dict) -> None:
    """Stop before training when a pretrained file the model config names is missing, saying how to get it.

    Args:
        model_cfg: the config's ``model`` dict.

    Raises:
        FileNotFoundError: a local pretrained file is missing; for a backbone of the catalogue the message gives
            the ``tools/download_weights.py`` command that fetches it (or, for a gated release, how to get it).
    """
    for key, path in _pretrained_paths(model_cfg, 'model'):
        if '://' in path or Path(path).expanduser().is_file():
            continue
        message = f'pretrained checkpoint {path!r} ({key}) does not exist. '
        try:
            weights = find_weights(Path(path).name)
        except KeyError:
            raise FileNotFoundError(message + 'Weights are read from local files only: put the file there or set '
                                    f'{key} to its path.') from None
        if weights.gated:
            raise FileNotFoundError(message + f'{weights.title} is a gated release. ' + weights.access.format(
                path=path, access_url=weights.access_url))
        folder = str(Path(path).parent)
        raise FileNotFoundError(message + f'Fetch it with: python tools/download_weights.py {weights.name}'
                                + ('' if folder == DEFAULT_DIR else f' --dir {folder}'))
