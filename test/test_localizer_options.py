"""build_options / option_fields: the typed options dataclass behind ``<name>.<option>`` ROS parameters."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from vizloc_ros.localizer import (ConfigError, LocalizerConfig, LocalizerContext, LocalizerRegistry, LocalizerType,
                                  NoOptions, UnknownLocalizerTypeError, build_options, coerce_text,
                                  option_fields, options_from_text, parse_key_values)


@dataclass(frozen=True)
class Opts:
    threshold: float = field(default=0.5, metadata={'description': 'minimum confidence'})
    window: int = 5
    smooth: bool = True
    labels: list[str] = field(default_factory=lambda: ['a', 'b'])
    weights: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=lambda: [1])
    mode: str = 'mean'

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f'window must be >= 1, got {self.window}')


def test_defaults_and_coercion():
    assert build_options(Opts, {}) == Opts()
    opts = build_options(Opts, {'threshold': 1, 'weights': [1, 2.5], 'labels': ('x',), 'smooth': False})
    assert opts.threshold == 1.0 and isinstance(opts.threshold, float)
    assert opts.weights == [1.0, 2.5] and all(isinstance(w, float) for w in opts.weights)
    assert opts.labels == ['x'] and opts.smooth is False


def test_unknown_keys_are_errors_that_list_the_known_ones():
    with pytest.raises(ConfigError, match=r"room: unknown option\(s\) \['treshold'\]; known: \['labels'"):
        build_options(Opts, {'treshold': 0.3}, where='room')


@pytest.mark.parametrize('values, match', [
    ({'window': 2.0}, 'window must be an integer'),
    ({'window': True}, 'window must be an integer'),
    ({'threshold': '0.5'}, 'threshold must be a number'),
    ({'threshold': False}, 'threshold must be a number'),
    ({'smooth': 1}, 'smooth must be true or false'),
    ({'mode': 3}, 'mode must be a string'),
    ({'labels': 'a'}, 'labels must be a list of str'),
    ({'labels': ['a', 2]}, 'labels must be a string'),
    ({'sizes': [1, 2.5]}, 'sizes must be an integer'),
    ({'window': 0}, 'window must be >= 1'),  # the dataclass's own check becomes a ConfigError
])
def test_wrong_types_and_values_are_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        build_options(Opts, values, where='loc')


@pytest.mark.parametrize('text, tp, want', [
    ('160', int, 160), ('0.5', float, 0.5), ('3', float, 3.0), ('mean', str, 'mean'), (' Yes', bool, True),
    ('off', bool, False), ('0', bool, False), ('0.25, 0.75', list[float], [0.25, 0.75]), ('a,,b ', list[str], ['a', 'b']),
    ('8,16', list[int], [8, 16]), ('', list[int], []),
])
def test_coerce_text_parses_command_line_values_by_type(text, tp, want):
    got = coerce_text(text, tp, 'key')
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize('text, tp, match', [
    ('big', int, 'key must be an integer'), ('1.5', int, 'key must be an integer'), ('x', float, 'key must be a number'),
    ('maybe', bool, 'key must be true or false'), ('1,x', list[int], 'key must be an integer'),
])
def test_coerce_text_refuses_text_of_another_type(text, tp, match):
    with pytest.raises(ConfigError, match=match):
        coerce_text(text, tp, 'key')


def test_option_fields_describe_each_field_and_validate_types():
    fields = {name: (tp, default, desc) for name, tp, default, desc in option_fields(Opts)}
    assert fields['threshold'] == (float, 0.5, 'minimum confidence')
    assert fields['labels'] == (list[str], ['a', 'b'], '')

    @dataclass(frozen=True)
    class BadType:
        mapping: dict = field(default_factory=dict)

    @dataclass(frozen=True)
    class NoDefault:
        value: int

    with pytest.raises(TypeError, match='is not one of'):
        option_fields(BadType)
    with pytest.raises(TypeError, match='needs a default'):
        option_fields(NoDefault)
    with pytest.raises(TypeError, match='must be a dataclass'):
        LocalizerType(name='x', factory=lambda *a: None, options_type=dict)
    assert option_fields(NoOptions) == []


def test_localizer_config_validation_and_registry_create(tmp_path):
    with pytest.raises(ConfigError, match='must start with a letter'):
        LocalizerConfig(name='1room', type='t')
    with pytest.raises(ConfigError, match='max_rate_hz must be >= 0'):
        LocalizerConfig(name='room', type='t', max_rate_hz=-1.0)
    created = []

    def factory(config, options, context):
        created.append((config.name, options, context.map_frame))
        return object()

    registry = LocalizerRegistry()
    registry.register(LocalizerType(name='t', factory=factory, options_type=Opts, needs_bundle=False))
    registry.create(LocalizerConfig(name='room', type='t'), {'window': 3}, LocalizerContext(cache_dir=tmp_path))
    assert created == [('room', Opts(window=3), 'map')]
    with pytest.raises(ConfigError, match=r"room: unknown option\(s\)"):
        registry.create(LocalizerConfig(name='room', type='t'), {'x': 1}, LocalizerContext(cache_dir=tmp_path))
    with pytest.raises(UnknownLocalizerTypeError, match="no plugin registered localizer type 'nope'"):
        registry.create(LocalizerConfig(name='room', type='nope'), {}, LocalizerContext(cache_dir=tmp_path))


def test_command_line_key_values_become_typed_options():
    texts = parse_key_values(['threshold=0.75', ' labels =x, y', 'smooth=off', 'weights='], '--option')
    assert texts == {'threshold': '0.75', 'labels': 'x, y', 'smooth': 'off', 'weights': ''}
    assert parse_key_values(['max-side=3'], '--set') == {'max_side': '3'}
    assert options_from_text(Opts, texts) == Opts(threshold=0.75, labels=['x', 'y'], smooth=False, weights=[])
    for bad in (['threshold'], ['=1']):
        with pytest.raises(ConfigError, match='KEY=VALUE'):
            parse_key_values(bad, '--option')
    with pytest.raises(ConfigError, match='unknown option'):
        options_from_text(Opts, {'no_such': '1'})
    with pytest.raises(ConfigError, match='window'):  # the value parses; the dataclass refuses it
        options_from_text(Opts, {'window': '0'})
    with pytest.raises(ConfigError, match='integer'):
        options_from_text(Opts, {'window': 'five'})
