"""``python launch/infer.py --help``: every key of the schema with its default, type and doc.

The docs are the schema's own attribute docstrings (the string under each field in schema.py
and tasks.py), read from the source, so the help can never drift from the schema. The text
becomes Hydra's ``hydra/help`` template; Hydra adds the config groups.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import MISSING

WIDTH = 96

HEADER = """ddpinfer: distributed batch inference, one process per GPU, one ordered result file.

    python launch/infer.py [key=value ...]                     # one process
    torchrun --nproc_per_node=N launch/infer.py [key=value ...]  # N processes

Override any key below as key=value (a custom task's own keys as +task.my_key=value).
"""

FOOTER = """Print the composed config and exit: --cfg job (add --resolve to resolve it).
Hydra's own flags: --hydra-help. More in README.md."""


def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring, base classes first (a subclass may redefine a field
    without repeating its doc)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _is_group(f: dataclasses.Field) -> bool:
    """A field whose default is a dataclass of its own (``model``, ``task.vllm``)."""
    return f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
        f.default_factory
    )


def _default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:
        return str(f.default_factory())
    if f.default is MISSING or f.default is dataclasses.MISSING:
        return "???  (required)"
    if f.default is None:
        return "null"
    if isinstance(f.default, bool):
        return str(f.default).lower()
    return str(f.default)


def _key_lines(cls: type, prefix: str) -> Iterator[str]:
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if _is_group(f) or f.name == "task":
            continue  # a group: listed in its own section
        if prefix == "task." and f.name == "name":
            continue  # chosen with task=<name>
        yield f"  {prefix}{f.name}={_default(f)}  ({f.type})"
        doc = docs.get(f.name, "")
        if doc:
            yield textwrap.fill(
                " ".join(doc.split()),
                WIDTH,
                initial_indent="      ",
                subsequent_indent="      ",
            )


def _section(title: str, cls: type, prefix: str) -> list[str]:
    intro = inspect.cleandoc(cls.__doc__ or "")
    lines = [f"== {title} =="]
    if intro and not intro.startswith(cls.__name__ + "("):  # not dataclass's generated doc
        lines.append(textwrap.fill(" ".join(intro.split()), WIDTH))
    return [*lines, *_key_lines(cls, prefix), ""]


def keys_text(schema: type, tasks: Mapping[str, type]) -> str:
    """The help's body: top-level keys, each group of keys, then each task's keys."""
    lines = _section("Keys", schema, "")
    for f in dataclasses.fields(schema):
        if _is_group(f):
            group = f.default_factory  # the group's dataclass
            lines += _section(f"{f.name}.*", group, f"{f.name}.")  # type: ignore[arg-type]
    nested: dict[str, type] = {}
    for name, cls in tasks.items():
        lines += _section(f"task={name}: task.*", cls, "task.")
        for f in dataclasses.fields(cls):
            if _is_group(f):
                nested.setdefault(f.name, f.default_factory)  # type: ignore[arg-type]
    for name, group in nested.items():  # groups inside task schemas (task.vllm.*), listed once
        lines += _section(f"task.{name}.*", group, f"task.{name}.")
    return "\n".join(lines)


def help_node(schema: type, tasks: Mapping[str, type]) -> dict[str, Any]:
    """The ``hydra/help`` config: Hydra's template with the keys in it. ``$`` is doubled for
    Hydra's string.Template; the schema's docs hold no ``${`` for OmegaConf to resolve."""
    body = keys_text(schema, tasks).replace("$", "$$")
    template = (
        "${hydra.help.header}\n== Config groups ==\n"
        f"task: {', '.join(tasks)}  (task=<name>; the default is embed)\n\n"
        f"{body}\n${{hydra.help.footer}}\n"
    )
    return {"app_name": "ddpinfer", "header": HEADER, "footer": FOOTER, "template": template}
