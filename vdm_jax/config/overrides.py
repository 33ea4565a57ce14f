"""Loading a config module and applying `--config.<key>=<value>` overrides, each checked against
the schema: an unknown key names the closest one and the section's keys, a wrongly typed value
says what type is expected and gives an example."""

from __future__ import annotations

import ast
import difflib
import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict


def load(path: str | Path, overrides: Sequence[tuple[str, str]] = ()) -> ConfigDict:
    """The config of module `path` (its `get_config()`), with `overrides` applied, locked.
    ValueError naming the problem for a missing or broken file, a bad key or value."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"--config={path}: no such file. Give a config module with "
                         "get_config(), e.g. --config=configs/digits_dit.py")
    spec = importlib.util.spec_from_file_location(f"vdm_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        config = module.get_config()
    except Exception as e:  # a config file is user input: report, don't trace back
        raise ValueError(f"--config={path} could not be loaded: {type(e).__name__}: "
                         f"{' '.join(str(e).split())}") from None
    if not isinstance(config, ConfigDict):
        raise ValueError(f"--config={path}: get_config() returned a {type(config).__name__}, "
                         "expected an ml_collections ConfigDict")
    config.lock()
    apply_overrides(config, overrides)
    return config


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def _parse_value(text: str, kind: type, key: str, current: Any) -> Any:
    """`text` as a value of type `kind` (the schema's type of `key`)."""
    def wrong() -> ValueError:
        shown = current.to_dict() if hasattr(current, "to_dict") else current
        if shown is None:  # an unset field: an example of its type, not its unset value
            shown = {tuple: (0.1, 0.9), list: [0.1, 0.9], int: 3, float: 0.5, bool: True,
                     str: "name", dict: {"key": 1}}.get(kind, shown)
        example = f'"{shown!r}"' if isinstance(shown, dict | tuple | list) else f"{shown!r}"
        return ValueError(f"wrong type for config key '{key}': got {text!r}, expected "
                          f"{kind.__name__}; e.g. --config.{key}={example}")

    if text in ("None", "none", "null") and current is None:
        return None
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise wrong()
    if kind is str:
        value = _literal(text)
        return value if isinstance(value, str) else text
    value = _literal(text)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong()
        return float(value)
    if kind in (tuple, list):
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, tuple | list):
            raise wrong()
        return tuple(value)
    if issubclass(kind, Mapping) or kind is ConfigDict:
        if not isinstance(value, dict):
            raise wrong()
        return value
    return value


def apply_overrides(config: ConfigDict, overrides: Sequence[tuple[str, str]]) -> ConfigDict:
    """Set each (dotted key, text) on the locked `config`, checking the key and the value's
    type; ValueError naming the key (with the closest existing one) or the expected type."""
    for key, text in overrides:
        parts = key.split(".")
        node = config
        for i, part in enumerate(parts):
            section = ".".join(parts[:i])
            if not isinstance(node, ConfigDict):
                raise ValueError(f"unknown config key '{key}': '{section}' is a value "
                                 f"({node!r}), not a section")
            if part not in node:
                keys = sorted(node.keys())
                where = f"'{section}'" if section else "the config"
                msg = f"unknown config key '{key}': {where} has no '{part}'"
                if close := difflib.get_close_matches(part, keys, n=1):
                    msg += f"; did you mean '{'.'.join([*parts[:i], close[0]])}'?"
                else:
                    msg += "."
                msg += f" Its keys: {', '.join(keys) or '(none)'}."
                if i >= 2:  # inside a dict-valued field (model.spec, …_kwargs, sample.options)
                    whole = {**node.to_dict(), part: _literal(text)}
                    msg += (f" {section} is a free-form dict: to add a key, replace it whole, "
                            f"e.g. --config.{section}=\"{whole!r}\".")
                raise ValueError(msg)
            if i < len(parts) - 1:
                node = node[part]
        leaf, current = parts[-1], node[parts[-1]]
        kind = node.get_type(leaf) if hasattr(node, "get_type") else type(current)
        value = _parse_value(text, kind, key, current)
        try:
            node[leaf] = value
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"config key '{key}': cannot set {text!r}: "
                             f"{' '.join(str(e).split())}") from None
    return config
