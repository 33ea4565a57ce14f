"""Train a diffusion model: python launch/train.py --config=configs/<name>.py --workdir=DIR.

Override any config field on the command line, e.g. `--config.train.num_steps=100`; a dict-valued
field is replaced whole with a Python literal, e.g.
`--config.diffusion.schedule_kwargs="{'gamma_min': -7.0, 'gamma_max': 5.0}"`. Rerunning with the
same workdir resumes from its newest readable checkpoint. Multi-host: jax.distributed is
initialized from --config.distributed.* when given, or from the environment on Cloud TPU / SLURM
(see launch/tpu/README.md).

Exit status: 0 when training finished or was preempted (SIGTERM: the current step is saved);
2 with a one-line `error: ...` for bad input (an unknown config key, a wrong-typed value, a config
the devices or the data cannot serve, a workdir holding another configuration's run), before
anything is written to the workdir; 1 with `error: ...` when the loss becomes NaN or Inf (not bad
input: the run stops naming the step, and its last checkpoint stays the newest).
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from vdm_jax.cli import BAD_INPUT_EXIT_CODE, exit_on_bad_input

USAGE = ("python launch/train.py --config=configs/digits_dit.py --workdir=DIR "
         "[--config.<key>=VALUE ...]")
NON_FINITE_EXIT_CODE = 1  # a diverged run is not bad input: see the module docstring

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config module.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
flags.mark_flags_as_required(["config", "workdir"])


# ------------------------------------------------------------------------ flag-parsing errors
def _config_file(argv: Sequence[str]) -> str | None:
    """The value of --config (`--config=PATH` or `--config PATH`) in argv; the last one wins."""
    found = None
    for i, arg in enumerate(argv):
        if m := re.fullmatch(r"--?config=(.*)", arg, re.S):
            found = m.group(1)
        elif arg in ("--config", "-config") and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def _overrides(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """(key path, value or None) of every `--config.<path>[=value]` in argv."""
    found = []
    for arg in argv[1:]:
        if m := re.fullmatch(r"--?(?:no)?config\.([^=]+)(?:=(.*))?", arg, re.S):
            found.append((m.group(1), m.group(2)))
    return found


def _load_config(argv: Sequence[str]) -> Any | None:
    """The config module's config without overrides, to explain an error; None if unloadable."""
    path = _config_file(argv)
    if not path:
        return None
    try:
        config = flags.FLAGS["config"].parser.parse(path)
        config.keys()  # an unloadable file yields a placeholder that raises on first use
    except Exception:  # only for a better message: the caller falls back to the raw error
        return None
    return config


def _literal(text: str | None) -> Any:
    try:
        return ast.literal_eval(text) if text is not None else True
    except (SyntaxError, ValueError):
        return text


def _unknown_key_message(config: Any, path: str, value: str | None) -> str | None:
    """Explain `--config.<path>` naming a key the config lacks; None if every key exists."""
    parts = path.split(".")
    node = config
    for i, key in enumerate(parts):
        section = ".".join(parts[:i])
        if not hasattr(node, "keys"):
            return (f"unknown config key '{path}': '{section}' is a value "
                    f"({node!r}), not a section with keys.")
        if key in node:
            node = node[key]
            continue
        keys = sorted(node.keys())
        where = f"'{section}'" if section else "the config"
        message = f"unknown config key '{path}' (from --config.{path}): {where} has no '{key}'"
        if close := difflib.get_close_matches(key, keys, n=1):
            message += f"; did you mean '{'.'.join([*parts[:i], close[0]])}'?"
        else:
            message += "."
        message += f" Its keys: {', '.join(keys) or '(none)'}."
        if i >= 2:  # inside a dict-valued field (model.spec, diffusion.schedule_kwargs, ...)
            whole = {**node.to_dict(), key: _literal(value)} if i + 1 == len(parts) else None
            example = repr(whole) if whole is not None else "{...}"
            message += (f" {section} is a free-form dict: to add a key, replace it whole, "
                        f"e.g. --config.{section}=\"{example}\".")
        return message
    return None


def _wrong_type_message(config: Any, path: str, value: str | None) -> str:
    """Explain a value that does not parse as the type of config key `path`."""
    parent, _, key = path.rpartition(".")
    section = config
    for part in parent.split(".") if parent else []:
        section = section[part]
    current = section[key]
    try:
        type_name = section.get_type(key).__name__
    except (AttributeError, KeyError, TypeError):
        type_name = type(current).__name__
    if hasattr(current, "to_dict"):
        current = current.to_dict()
        type_name, example = "a dict literal", f'--config.{path}="{current!r}"'
    elif type_name == "bool":
        example = f"--config.{path}=true or false"
    elif current is None:
        example = f"--config.{path}=<{type_name}>"
    else:
        example = f"--config.{path}={current!r}"
    return (f"wrong type for config key '{path}': got {value!r}, expected {type_name}. "
            f"The config has {current!r}; pass e.g. {example}.")


def _explain(error: Exception, argv: Sequence[str]) -> str:
    """A one-paragraph message naming what is wrong on the command line and how to fix it."""
    path = _config_file(argv)
    if isinstance(error, OSError) or (path and not os.path.isfile(path.split(":", 1)[0])):
        return _config_file_message(path, error)
    config = _load_config(argv)
    raw = str(error).strip()
    if isinstance(error, AttributeError | KeyError) and config is not None:
        for key_path, value in _overrides(argv):
            if message := _unknown_key_message(config, key_path, value):
                return message
    if isinstance(error, flags.IllegalFlagValueError) and config is not None:
        m = re.match(r"flag --config\.([^=]+)=(.*?): ", raw, re.S)
        if m and _unknown_key_message(config, m.group(1), m.group(2)) is None:
            try:
                return _wrong_type_message(config, m.group(1), m.group(2))
            except (AttributeError, KeyError, TypeError):
                pass  # a path ml_collections accepts but we cannot walk: keep its message
    first = raw.splitlines()[0].rstrip(".") if raw else type(error).__name__
    return f"{first}. Usage: {USAGE}"


def _config_file_message(path: str | None, error: Exception) -> str:
    if not path:
        return f"--config=FILE is required. Usage: {USAGE}"
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
        return (f"--config={path}: no such file. Give a config module with get_config(), "
                "e.g. --config=configs/digits_dit.py.")
    return f"--config={path} could not be loaded: {' '.join(str(error).split())}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with errors as `error: <message>` and exit status 2.

    absl reports a bad value as "FATAL Flags parsing error" with status 1, and ml_collections
    raises AttributeError (with a traceback) for an unknown key; both are bad input.
    VDM_JAX_TRACEBACK=1 shows the original exception.
    """
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, OSError) as e:
        if os.environ.get("VDM_JAX_TRACEBACK"):
            raise
        message = _explain(e, argv)
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(BAD_INPUT_EXIT_CODE)


# ------------------------------------------------------------------------------------ main
def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file at INFO
    with exit_on_bad_input():
        if len(argv) > 1:
            raise ValueError(f"unexpected arguments {argv[1:]}; flags are --name=value. "
                             f"Usage: {USAGE}")
        try:
            config = _CONFIG.value
            config.keys()
        except OSError as e:  # the config file is missing or unreadable (no overrides given)
            raise ValueError(_config_file_message(_config_file(sys.argv), e)) from None
        from vdm_jax.parallel import distributed
        from vdm_jax.training import loop as trainer

        distributed.initialize(config.distributed)
        try:
            summary = trainer.train(config, _WORKDIR.value)
        except trainer.NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(NON_FINITE_EXIT_CODE) from None
        if summary["preempted"]:
            print(f"Preempted: saved step {summary['step']} in {_WORKDIR.value}.", flush=True)
            return
        if config.eval.at_end and summary["step"] >= config.train.num_steps:
            results = trainer.evaluate_at_end(summary, config, _WORKDIR.value)
            print(trainer.format_results(results), flush=True)
        elif summary["sample_grid"]:
            print(f"sample grid: {summary['sample_grid']}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
