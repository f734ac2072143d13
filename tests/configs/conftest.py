"""Fixtures of the config tests: each reads many shipped configs, whose ``mmseg::`` bases are looked up once."""
from collections.abc import Iterator

import mmengine.config.config as mmengine_config
import pytest


@pytest.fixture(scope='module', autouse=True)
def external_base_lookups_parsed_once() -> Iterator[None]:
    """Each ``mmseg::`` base lookup parses all of mmseg's model-index files (0.25 s); do that once per base."""
    lookup = mmengine_config._get_external_cfg_path
    outcomes = {}

    def remembered(package_path: str, cfg_file: str) -> str:
        key = (package_path, cfg_file)
        if key not in outcomes:
            try:
                outcomes[key] = lookup(package_path, cfg_file)
            except ValueError as error:  # a base config (no metafile entry): mmengine falls back to the base path
                outcomes[key] = error
        if isinstance(outcomes[key], ValueError):
            raise outcomes[key]
        return outcomes[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mmengine_config, '_get_external_cfg_path', remembered)
        yield
