"""The one way a run's settings are resolved, for every recipe (pre-training,
fine-tuning, the downstream recipes):

    preset's recipe  <  --config file  <  flags given on the command line

`resolve` merges them and names where each value came from ("preset",
"file", "flag"); `describe` prints them that way; `read_config_file` reads a
JSON or YAML file and names the file, line and column of a syntax error;
`coerce` turns a file's or flag's value into its type where that is
unambiguous. Errors are `ConfigError`s (the recipes print them as one line);
`ArgumentParser` is argparse raising them instead of exiting, so library
code that parses an argv never ends the process.
"""

import argparse
import json
import math
import os

from keras_conmim.errors import ConfigError

# The package's one list of backends (recipes/recipe_main.py keeps a copy: it
# runs before Keras loads, so it imports nothing of the package; a test keeps
# the two equal).
BACKENDS = ("jax", "tensorflow", "torch")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise `ConfigError` (the recipe decides to exit)."""

    def error(self, message):
        raise ConfigError(message)


def read_config_file(path, valid_keys):
    """The mapping in a JSON (`.json`, or any other name) or YAML (`.yaml`,
    `.yml`) config file. A missing file, a syntax error (with its line and
    column), a file that is no mapping, or unknown keys raise ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: file not found.")
    with open(path) as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"--config {path}: YAML configs need PyYAML (pip install pyyaml), "
                              "or write the file as JSON.") from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"--config {path}: not valid YAML at {where}: {problem}. Fix the "
                              "file (each line `key: value`).") from None
    else:
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: not valid JSON at line {e.lineno}, column "
                              f"{e.colno}: {e.msg}. Fix the file, or write it as YAML "
                              "(.yaml).") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"--config {path}: holds a {type(config).__name__}, not a mapping of "
                          "option names to values.")
    unknown = sorted(set(config) - set(valid_keys))
    if unknown:
        raise ConfigError(f"--config {path}: unknown keys {unknown}. "
                          f"Valid keys: {', '.join(valid_keys)}.")
    return config


def resolve(keys, recipe, from_file, from_flags):
    """`(values, sources)` for `keys`: a flag's value, else the file's, else
    the recipe's; `sources[key]` is "flag", "file" or "preset"."""
    values, sources = {}, {}
    for key in keys:
        if key in from_flags:
            values[key], sources[key] = from_flags[key], "flag"
        elif key in from_file:
            values[key], sources[key] = from_file[key], "file"
        else:
            values[key], sources[key] = recipe[key], "preset"
    return values, sources


def describe(title, values, sources, keys):
    """A line per value, naming the source of any not taken from the preset
    (a source may be a longer text, e.g. a scaling rule)."""
    lines = [title]
    for key in keys:
        source = sources.get(key, "preset")
        origin = "" if source == "preset" else f"   <- {source}"
        lines.append(f"  {key:<20} {json.dumps(values[key])}{origin}")
    return "\n".join(lines)


def coerce(value, kind, nullable=False):
    """`value` as `kind` where that is unambiguous ("1e-3" -> 0.001, 4.0 ->
    4, "true" -> True), else ValueError saying what is expected. Floats must
    be finite; a bool is no number."""
    if value is None or (nullable and isinstance(value, str) and value.lower() == "none"):
        if nullable:
            return None
        raise ValueError("must be set")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("must be true or false")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ValueError("must be a string")
    if kind is dict:
        if isinstance(value, dict):
            return value
        raise ValueError("must be a mapping")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    if kind is int:
        if isinstance(value, int):
            return value
        if not number.is_integer():
            raise ValueError("must be an integer")
        return int(number)
    return number


def add_recipe_flags(parser, recipe_class, title=None):
    """One flag per field of the typed recipe `recipe_class` (a dataclass):
    `--batch-size` for `batch_size`, its type from the field's annotation,
    its help and choices from the field's metadata (`help`, `choices`,
    `aliases`), default None (the preset's value, or a --config file's,
    applies unless the flag is given). The recipe's own validation runs
    when the resolved values become a recipe; `check_recipe_flags` runs it
    on the flags alone, at parse time. Returns the group."""
    import dataclasses

    group = parser.add_argument_group(title or "recipe (default: the preset's; each value "
                                      "printed with its source)")
    kinds = {"int": int, "float": float, "str": str, int: int, float: float, str: str}
    for f in dataclasses.fields(recipe_class):
        meta = f.metadata
        names = [f"--{f.name.replace('_', '-')}", *meta.get("aliases", ())]
        group.add_argument(*names, dest=f.name, type=kinds[f.type], default=None,
                           choices=meta.get("choices"), help=meta.get("help"))
    return group


def check_recipe_flags(args, recipe_class, parser):
    """Each recipe flag given on its own, through the recipe's validation
    (`recipe_class.field_errors`): `parser.error` names the flag."""
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(recipe_class)
             if getattr(args, f.name, None) is not None}
    for error in recipe_class.field_errors(given):
        parser.error(error)
