from ..integration.conftest import ade_root, tiny_config  # noqa: F401  (shared generated data)

TINY_BASELINES = {
    'lora': "model = dict(backbone=dict(snella=dict(kernel='linear')))",
    'snell': "model = dict(backbone=dict(snella=dict(kernel='snell', sparsity=0.7)))",
    'full': 'model = dict(backbone=dict(_delete_=True, **{inner}))',
    'frozen': 'model = dict(backbone=dict(_delete_=True, frozen=True, **{inner}))',
}


def tiny_config_with_baselines(ade_root: str, folder) -> str:
    """The tiny config as ``snella_tiny.py`` with its baselines in ``baselines/``, laid out as configs/ is."""
    cfg = tiny_config(ade_root, str(folder / 'work'))
    config = folder / 'snella_tiny.py'
    cfg.dump(str(config))
    (folder / 'baselines').mkdir()
    inner = cfg.model.backbone.backbone.to_dict()
    for method, body in TINY_BASELINES.items():
        text = f"_base_ = '../snella_tiny.py'\n{body.format(inner=inner)}\n"
        (folder / 'baselines' / f'{method}_tiny.py').write_text(text)
    return str(config)
