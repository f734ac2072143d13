"""SNELLAConfig: defaults, validation, serialisation, and inject_snella taking it."""
import dataclasses

import pytest
import torch

from snella_seg.snella import SNELLAConfig, inject_snella
from snella_seg.snella.config import INFERENCE_OPTIONS

from tests.helpers.tiny_vit import ALL_TARGETS, TinyViT


def test_unset_options_take_the_documented_defaults():
    config = SNELLAConfig(targets=[r'.*qkv'], rank=4)
    assert (config.kernel, config.mask, config.sparsity, config.dropout, config.drop_path) == (
        'snella', 'magnitude', 0.0, 0.0, 0.0)
    assert config.checkpoint and config.split_qkv and config.absorb_activations


def test_every_option_is_documented_in_the_docstring():
    assert all(f'{name}:' in SNELLAConfig.__doc__ for name in SNELLAConfig.option_names())


def test_dict_round_trip_gives_the_same_config():
    config = SNELLAConfig(targets=(r'.*qkv', r'.*fc\d'), rank=4, kernel='snell', mask='binary', sparsity=0.2)
    assert SNELLAConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()['targets'] == [r'.*qkv', r'.*fc\d']


def test_a_single_target_string_becomes_a_list():
    assert SNELLAConfig(targets=r'.*qkv', rank=4).targets == [r'.*qkv']


def test_unknown_option_is_refused_naming_where_it_came_from_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown SNELLA option\(s\) \['rnak'\] in my config; valid options: "
                                         r"\['targets', 'rank'"):
        SNELLAConfig.from_dict(dict(targets=['fc'], rnak=4), origin='my config')


@pytest.mark.parametrize('options, message', [
    (dict(rank=4), 'my config needs "targets"'),
    (dict(targets=['fc']), r"my config needs \['rank'\]"),
])
def test_missing_required_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        SNELLAConfig.from_dict(options, origin='my config')


@pytest.mark.parametrize('options, message', [
    (dict(targets=[]), 'needs "targets"'), (dict(targets=['blocks.((']), 'not a valid regular expression'),
    (dict(rank=0), 'rank must be a positive integer'), (dict(rank=3), 'divisible by 2'),
    (dict(rank=2.5, kernel='linear'), 'rank must be a positive integer'),
    (dict(kernel='rbf'), 'unknown kernel'), (dict(mask='soft'), 'unknown mask'),
    (dict(sparsity=1.0), 'sparsity must be in'), (dict(dropout=-0.1), 'dropout must be in'),
    (dict(drop_path=1.5), 'drop_path must be in'),
])
def test_bad_options_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message):
        SNELLAConfig(**dict(dict(targets=['fc'], rank=4), **options))


def test_differences_name_only_the_options_that_change_predictions():
    trained = SNELLAConfig(targets=['fc'], rank=4, mask='binary', dropout=0.1, sparsity=0.3)
    deployed = SNELLAConfig(targets=['fc'], rank=8)
    assert trained.differences(deployed) == [('rank', 4, 8), ('mask', 'binary', 'magnitude')]
    assert set(INFERENCE_OPTIONS) < set(SNELLAConfig.option_names())


def test_inject_with_a_config_equals_inject_with_options():
    models = []
    for call in (lambda m: inject_snella(m, SNELLAConfig(targets=ALL_TARGETS, rank=4, kernel='snell')),
                 lambda m: inject_snella(m, ALL_TARGETS, rank=4, kernel='snell')):
        torch.manual_seed(0)
        model = TinyViT()
        call(model)
        models.append(model.state_dict())
    assert models[0].keys() == models[1].keys()
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


def test_inject_refuses_a_config_and_options_together():
    config = SNELLAConfig(targets=ALL_TARGETS, rank=4)
    with pytest.raises(TypeError, match=r"options \['rank'\]: put them in the config"):
        inject_snella(TinyViT(), config, rank=8)
    inject_snella(TinyViT(), dataclasses.replace(config, rank=8))
