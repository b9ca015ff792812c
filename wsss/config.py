"""Config loading: YAML + JSON schema validation, defaults filled, errors naming the key."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wsss.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


def _fill_defaults(validator_class: type) -> type:
    """Extend a jsonschema validator so that ``default`` values are written into the instance."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001, ANN202
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _fill_defaults(jsonschema.Draft7Validator)


def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read the config JSON schema (YAML syntax)."""
    with open(path) as fh:
        return yaml.safe_load(fh)


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts.append(extra[0] if extra else "?")
        return ".".join(parts) or "<root>"
    return ".".join(parts) or "<root>"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "unknown key"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    if error.validator == "pattern" and error.schema.get("description"):
        return f"{error.instance!r} is not allowed: {error.schema['description']}"
    return error.message


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = root["definitions"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def coerce_strings(value: Any, node: dict[str, Any], root: dict[str, Any]) -> Any:
    """Parse strings where the schema wants numbers, booleans or null.

    Snakemake hands nested ``--config`` values over as strings (``cams={scales: [1.0]}`` gives
    ``['1.0']``); a string is replaced only by a YAML value of an allowed type, so a real
    mistake still fails validation with its key path.
    """
    node = _resolve(node, root)
    if isinstance(value, dict):
        props = node.get("properties", {})
        return {k: coerce_strings(v, props[k], root) if k in props else v
                for k, v in value.items()}
    if isinstance(value, list):
        items = node.get("items")
        return [coerce_strings(v, items, root) for v in value] if isinstance(items, dict) \
            else value
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    if isinstance(value, str) and types and "string" not in types:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        ok = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
              "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
              "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}
        if any(ok[t](parsed) for t in types if t in ok):
            return coerce_strings(parsed, node, root)
    return value


def validate_config(config: Mapping[str, Any], schema: dict[str, Any] | None = None) -> dict:
    """Validate ``config`` against the schema; return a deep copy with every default filled in."""
    schema = schema if schema is not None else load_schema()
    instance = coerce_strings(copy.deepcopy(dict(config)), schema, schema)
    errors = sorted(_Validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        err = min(errors, key=lambda e: len(e.absolute_path))
        raise ConfigError(f"config key {_key_path(err)}: {_message(err)}")
    # A second pass validates the defaults that were filled in on the first.
    errors = list(_Validator(schema).iter_errors(instance))
    if errors:
        raise ConfigError(f"config key {_key_path(errors[0])}: {_message(errors[0])}")
    return instance


def deep_update(base: dict, override: Mapping[str, Any]) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, others replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config.yaml"


def load_workflow_config(configfiles: list[str | Path] | None = None) -> dict:
    """The config a ``snakemake`` invocation with these ``--configfile`` files would use.

    As the Snakefile does: ``config.yaml`` (the demo) only when no file is given, else the files
    merged in order over the schema defaults alone; validated, defaults filled.
    """
    files = list(configfiles or [DEFAULT_CONFIG])
    config: dict = {}
    for path in files:
        try:
            with open(path) as fh:
                config = deep_update(config, yaml.safe_load(fh) or {})
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return validate_config(config)


def load_config(path: str | Path, *overrides: Mapping[str, Any]) -> dict:
    """Load a YAML config file, merge override dicts in order, and validate it."""
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    for override in overrides:
        config = deep_update(config, override)
    return validate_config(config)


#: ``classifier`` keys that only some methods read (the rest are shared by every method).
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "cam": ("cnn", "cnn_optim"),
    "cobra": ("cnn", "vit", "cobra", "cnn_optim", "vit_optim"),
    "cosa": ("cosa", "cosa_optim"),
}


def method_section(classifier: Mapping[str, Any]) -> dict[str, Any]:
    """The ``classifier`` section without the keys only other methods read (METHOD_KEYS), so
    that a change to, e.g., ``classifier.vit`` does not retrain a CoSA classifier. A method
    not in METHOD_KEYS keeps the whole section."""
    own = METHOD_KEYS.get(classifier["method"])
    if own is None:
        return dict(classifier)
    others = {k for keys in METHOD_KEYS.values() for k in keys} - set(own)
    return {k: v for k, v in classifier.items() if k not in others}


def repeated_configfile_flags(argv: list[str]) -> bool:
    """True when a command line repeats ``--configfile`` / ``--configfiles`` (Snakemake keeps
    only the last occurrence, so the earlier files would be dropped silently)."""
    flags = [a for a in argv if a in ("--configfile", "--configfiles")
             or a.startswith(("--configfile=", "--configfiles="))]
    return len(flags) > 1
