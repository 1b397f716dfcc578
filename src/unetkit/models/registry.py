"""Model registry: architectures are found by name, so configs and the CLI can name them in text.

A registered factory (usually an ``nn.Module`` class) takes ``in_channels`` and ``out_channels``
(logit channels: ``Task.out_channels``, 1 for a binary sigmoid head) plus keyword options. Options
are checked against the factory's signature before it is called, so a typo in a config fails with
the list of accepted options instead of a bare ``TypeError`` deep inside a constructor.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_FIXED_ARGUMENTS = ("in_channels", "out_channels")
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_DESCRIPTIONS: dict[str, str] = {}
_ROUTES: dict[str, tuple[str, Callable[..., nn.Module]]] = {}

FactoryT = TypeVar("FactoryT", bound=Callable[..., nn.Module])


def register_model(name: str, description: str | None = None) -> Callable[[FactoryT], FactoryT]:
    """Decorator that makes a model factory buildable by ``build_model(name, ...)``.

    ``description`` is the line ``unetkit list`` prints; by default the factory docstring's first.
    """

    def decorator(factory: FactoryT) -> FactoryT:
        if name in _REGISTRY:
            raise ValueError(f"a model named {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        first_line = (inspect.getdoc(factory) or "").strip().split("\n")[0]
        _DESCRIPTIONS[name] = description or first_line
        return factory

    return decorator


def route_option(name: str, option: str, factory: Callable[..., nn.Module]) -> None:
    """Build the registered model ``name`` with ``factory`` whenever ``option`` is given (not
    None); ``factory`` receives every option, ``option`` included."""
    _lookup(name)
    _ROUTES[name] = (option, factory)


def model_description(name: str) -> str:
    """One line saying what the model ``name`` is (empty if it has no docstring)."""
    _lookup(name)
    return _DESCRIPTIONS[name]


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def model_options(name: str) -> dict[str, Any]:
    """The keyword options a model accepts, each with its default value (a routed option and the
    options of its factory included, the model's own defaults first)."""
    options = _signature_options(_lookup(name))
    if name in _ROUTES:
        option, factory = _ROUTES[name]
        options = {**_signature_options(factory), **options, option: None}
    return options


def _signature_options(factory: Callable[..., nn.Module]) -> dict[str, Any]:
    parameters = inspect.signature(factory).parameters.values()
    return {
        parameter.name: parameter.default
        for parameter in parameters
        if parameter.name not in _FIXED_ARGUMENTS
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    }


def build_model(name: str, in_channels: int, out_channels: int, **options: Any) -> nn.Module:
    """Build a registered model that maps ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``.

    ``out_channels`` is the number of logit channels (``Task.out_channels``: 1 for a binary task),
    not the class count (``Task.num_classes``, which counts the background).
    """
    factory, variant, options = _factory_for(name, options)
    accepted = _signature_options(factory)
    for option in options:
        if option not in accepted:
            routed_only = not variant and option in model_options(name)
            hint = f" (it applies with {_ROUTES[name][0]}=...)" if routed_only else ""
            raise ValueError(
                f"model {name!r}{variant} has no option {option!r}{hint}"
                f"{_did_you_mean(option, accepted)}; accepted options: "
                f"{', '.join(accepted) or '(none)'}"
            )
    for argument, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{argument} must be a positive integer; got {value!r}")
    return factory(in_channels=in_channels, out_channels=out_channels, **options)


def _factory_for(
    name: str, options: dict[str, Any]
) -> tuple[Callable[..., nn.Module], str, dict[str, Any]]:
    """The factory that builds ``name`` with ``options``, words naming a routed variant, and the
    options to pass (a routed option left at None is dropped)."""
    if name not in _ROUTES:
        return _lookup(name), "", options
    route, routed_factory = _ROUTES[name]
    if options.get(route) is not None:
        return routed_factory, f" with {route}={options[route]!r}", options
    return _lookup(name), "", {key: value for key, value in options.items() if key != route}


def _lookup(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}{_did_you_mean(name, _REGISTRY)}; "
            f"known models: {', '.join(list_models())}"
        )
    return _REGISTRY[name]


def _did_you_mean(word: str, candidates: Any) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {matches[0]!r}?)" if matches else ""
