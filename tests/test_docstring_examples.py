"""Every example in a public docstring runs, over HTTP against the sandbox, with real Prefect.

Where examples are, and where they must not be:

- every name in the public `__all__` lists (`prefect_atomscale`, `prefect_atomscale.flows`,
  `atomscale_sandbox`, `atomscale_chemistry`) has an `Example:` section with a fenced
  python block, except the async twins, whose docstring is the one line "Async twin of
  `create_layer`: same arguments, result and errors." (the async client's methods name
  `AtomscaleClient.<method>`);
- public methods and properties of public classes, and the four packages' module
  docstrings, may have one;
- nothing else may: private functions, classes, methods and modules say in a line or
  two why they exist, without examples.

A name that cannot carry a `__doc__` of its own (a constant, a `Literal` alias) is
documented by the string literal right after its assignment (the attribute docstring
that mkdocstrings renders); the rules above apply to that string.

How the examples run (`test_example_runs`): each fenced block on its own, in a fresh
namespace and a new empty working directory (an example may write files there), with
the session's Prefect test harness, after a credentials block named "atomscale" was
saved for lab A on the session's sandbox; `ATOMSCALE_API_KEY` and `AS_API_ENDPOINT`
point at that sandbox too, so `AtomscaleCredentials()` reaches it as well. Examples
that write records pass again against the same sandbox: the tasks adopt what exists,
and the client's examples create target materials of their own each time.

Expected output: a comment after a `print(...)`, at the end of its last line or alone
on the line right below it, shows what that print writes. It is checked, and passes
when it is

- the printed text itself (`# 32 False`, `# L1 GaN 0001`);
- a Python literal equal to the printed text read as one (`# {'Ga': 1, 'N': 1}`);
- the start of the printed text, then `...` (`# Refusing to send the API key ...`);
- the printed text followed by `: ` or ` (` and a remark (`# False: fix the key first`,
  `# created 3 (already created 3 when run again)`).

A remark that shows no output goes on its own line above the print, or in the text
around the example.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import io
import linecache
import re
import sys
import textwrap
import tokenize
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import atomscale_chemistry
import atomscale_sandbox
import prefect_atomscale
import prefect_atomscale.flows
from atomscale_sandbox import SandboxHandle
from prefect_atomscale import AtomscaleCredentials

from conftest import KEY_A  # isort: skip

PUBLIC_PACKAGES = [
    prefect_atomscale,
    prefect_atomscale.flows,
    atomscale_sandbox,
    atomscale_chemistry,
]
# Every module of these is read for examples where none may be.
ROOT_PACKAGES = [prefect_atomscale, atomscale_sandbox, atomscale_chemistry]
OURS = tuple(package.__name__ for package in ROOT_PACKAGES)

_SECTION = re.compile(r"^Examples?:\s*$")
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


# --------------------------------------------------------------------------- the source


def _source_files() -> Iterator[tuple[str, Path]]:
    """(module name, file) of every module of the three packages, `__main__` included."""
    for package in ROOT_PACKAGES:
        folder = Path(inspect.getfile(package)).parent
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder.parent).with_suffix("").parts
            yield ".".join(parts).removesuffix(".__init__"), path


def _string_of(node: ast.stmt | None) -> str | None:
    """The text of a statement that is a bare string (a docstring), else None."""
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return inspect.cleandoc(node.value.value)
    return None


def _assigned_names(statement: ast.stmt) -> list[str]:
    if isinstance(statement, ast.Assign):
        targets = statement.targets
    elif isinstance(statement, ast.AnnAssign):
        targets = [statement.target]
    else:
        targets = []
    return [target.id for target in targets if isinstance(target, ast.Name)]


def _docstrings(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(qualname, docstring) of everything a module documents, attribute docstrings too.

    The module's own is `<module>`; a nested name is dotted (`Class.method`).
    """

    def walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
        for statement, following in zip(body, [*body[1:], None], strict=True):
            if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{statement.name}"
                doc = ast.get_docstring(statement)
                if doc is not None:
                    yield name, doc
                yield from walk(statement.body, f"{name}.")
            elif (doc := _string_of(following)) is not None:
                for assigned in _assigned_names(statement):
                    yield f"{prefix}{assigned}", doc

    doc = ast.get_docstring(tree)
    if doc is not None:
        yield "<module>", doc
    yield from walk(tree.body, "")


_TREES = {module: ast.parse(path.read_text(encoding="utf-8")) for module, path in _source_files()}


def _attribute_docstring(root: str, name: str) -> tuple[tuple[str, str], str | None]:
    """Where a constant or alias of package `root` is assigned, and its docstring if any."""
    for module, tree in _TREES.items():
        if module.split(".")[0] != root:
            continue
        for statement, following in zip(tree.body, [*tree.body[1:], None], strict=True):
            if name in _assigned_names(statement):
                return (module, name), _string_of(following)
    return (root, name), None


# --------------------------------------------------------------------------- what is public


@dataclass(frozen=True)
class Documented:
    """One public thing: a name in `__all__`, a public member of a public class, a package."""

    id: str  # as a reader writes it, e.g. prefect_atomscale.AtomscaleClient.create_layer
    where: tuple[str, str]  # (module, qualname) of its definition
    doc: str | None
    required: bool  # must have an example: a name in __all__ that is not an async twin
    twin_of: str | None = None  # an async twin: the sync sibling its one line names


def _defined_at(value: Any) -> tuple[str, str] | None:
    """(module, qualname) where a class, function, task or flow is defined, else None."""
    function = getattr(value, "fn", None)  # a Prefect task or flow wraps its function
    target = function if inspect.isfunction(function) else value
    if inspect.isclass(target) or inspect.isfunction(target):
        return target.__module__, target.__qualname__
    return None


def _public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """A class's own public methods and properties, as written in its body."""
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        function = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        function = function.fget if isinstance(function, property) else function
        if (
            inspect.isfunction(function)
            and function.__module__.startswith(OURS)
            and function.__qualname__ == f"{cls.__qualname__}.{name}"
        ):
            yield name, function


def _members(package: types.ModuleType, name: str, cls: type) -> Iterator[Documented]:
    # The async client's methods are twins of the sync client's (`aclose` of `close`).
    sync_name = name.removeprefix("Async")
    sync = getattr(package, sync_name) if sync_name != name else None
    for member, function in _public_members(cls):
        twin_of = None
        if sync is not None:
            sibling = member if hasattr(sync, member) else member.removeprefix("a")
            twin_of = f"{sync_name}.{sibling}"
        where = _defined_at(cls)
        assert where is not None
        yield Documented(
            f"{package.__name__}.{name}.{member}",
            (where[0], f"{where[1]}.{member}"),
            function.__doc__,
            required=False,
            twin_of=twin_of,
        )


def _documented() -> list[Documented]:
    found = []
    for package in PUBLIC_PACKAGES:
        found.append(
            Documented(package.__name__, (package.__name__, "<module>"), package.__doc__, False)
        )
        for name in package.__all__:
            value = getattr(package, name)
            where = _defined_at(value)
            if where is None:  # a constant or an alias: its attribute docstring
                where, doc = _attribute_docstring(package.__name__.split(".")[0], name)
            else:
                doc = value.__doc__
            sibling = name[1:] if name.startswith("a") and name[1:] in package.__all__ else None
            found.append(
                Documented(f"{package.__name__}.{name}", where, doc, sibling is None, sibling)
            )
            if inspect.isclass(value):
                found.extend(_members(package, name, value))
    return found


DOCUMENTED = _documented()


def examples_in(doc: str | None) -> list[str]:
    """The fenced python blocks of a docstring's `Example:` section, dedented."""
    if not doc:
        return []
    lines = inspect.cleandoc(doc).splitlines()
    starts = [index for index, line in enumerate(lines) if _SECTION.match(line)]
    if not starts:
        return []
    section = []
    for line in lines[starts[0] + 1 :]:
        if line.strip() and not line.startswith((" ", "\t")):
            break  # the next section
        section.append(line)
    text = textwrap.dedent("\n".join(section))
    return [textwrap.dedent(block) for block in _FENCE.findall(text)]


def _has_example_section(doc: str) -> bool:
    return any(_SECTION.match(line.strip()) for line in doc.splitlines())


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("item", [d for d in DOCUMENTED if d.required], ids=lambda d: d.id)
def test_every_public_name_has_an_example(item: Documented) -> None:
    assert item.doc, f"{item.id} has no docstring"
    assert examples_in(item.doc), f"{item.id}: no ```python block in an Example: section"


@pytest.mark.parametrize("item", [d for d in DOCUMENTED if d.twin_of], ids=lambda d: d.id)
def test_async_twins_point_at_their_sync_sibling(item: Documented) -> None:
    expected = f"Async twin of `{item.twin_of}`: same arguments, result and errors."
    assert (item.doc or "").strip() == expected


def test_no_private_name_has_an_example() -> None:
    allowed = {item.where for item in DOCUMENTED if item.twin_of is None}
    misplaced = [
        f"{module}: {qualname}"
        for module, tree in _TREES.items()
        for qualname, doc in _docstrings(tree)
        if _has_example_section(doc) and (module, qualname) not in allowed
    ]
    assert not misplaced, "examples on names that are not public:\n" + "\n".join(misplaced)


def test_examples_import_only_public_modules() -> None:
    private = [
        f"{item.id}: {line.strip()}"
        for item in DOCUMENTED
        for example in examples_in(item.doc)
        for line in example.splitlines()
        if re.match(r"\s*(from|import)\s+\S*\._", line)
    ]
    assert not private, "\n".join(private)


# --------------------------------------------------------------------------- running them


def _examples() -> Iterator[Any]:
    for item in DOCUMENTED:
        blocks = examples_in(item.doc)
        for number, block in enumerate(blocks, start=1):
            name = item.id if len(blocks) == 1 else f"{item.id}[{number}]"
            yield pytest.param(name, block, id=name)


def shows(comment: str, output: str) -> bool:
    """Whether a comment shows what a print wrote (see the module docstring)."""
    text = comment.removeprefix("#").strip()
    if text == output:
        return True
    try:
        expected = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    else:
        try:
            return bool(ast.literal_eval(output) == expected)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return output == expected
    if text.endswith("...") and output.startswith(text.removesuffix("...")):
        return True
    return any(text.startswith(output + separator) for separator in (": ", " ("))


def shown_outputs(source: str) -> dict[tuple[int, int], str]:
    """The print statements with a comment, (first line, last line) -> the comment."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string
    lines = source.splitlines()
    shown = {}
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "print"
        ):
            continue
        last = node.end_lineno or node.lineno
        comment = comments.get(last)
        if comment is None and last < len(lines) and lines[last].strip().startswith("#"):
            comment = comments.get(last + 1)
        if comment is not None:
            shown[(node.lineno, last)] = comment
    return shown


@pytest.fixture(scope="module")
def example_account(sandbox: SandboxHandle) -> Iterator[None]:
    """The block and environment the examples use: lab A on the session's sandbox."""
    AtomscaleCredentials(api_key=KEY_A, base_url=sandbox.url).save("atomscale", overwrite=True)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("ATOMSCALE_API_KEY", KEY_A)
        environment.setenv("AS_API_ENDPOINT", sandbox.url)
        yield


@pytest.mark.parametrize(("name", "source"), list(_examples()))
def test_example_runs(
    name: str,
    source: str,
    example_account: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    filename = f"<example {name}>"
    # Registered like a file, so that inspect.getsource (Prefect uses it) finds the code.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    printed: list[tuple[int, str]] = []

    def recording_print(
        *values: object,
        sep: str | None = " ",
        end: str | None = "\n",
        file: Any = None,
        flush: bool = False,
    ) -> None:
        caller = sys._getframe(1)
        if file is None and caller.f_code.co_filename == filename:
            printed.append((caller.f_lineno, (sep or " ").join(map(str, values))))
        builtins.print(*values, sep=sep, end=end, file=file, flush=flush)

    namespace = {"__name__": "example_" + re.sub(r"\W", "_", name), "print": recording_print}
    try:
        exec(compile(source, filename, "exec"), namespace)
    finally:
        linecache.cache.pop(filename, None)
    for (first, last), comment in shown_outputs(source).items():
        outputs = [text for line, text in printed if first <= line <= last]
        assert outputs, f"line {last}: the print shown as {comment!r} never ran"
        for output in outputs:
            assert shows(comment, output), f"line {last} printed {output!r}; it shows {comment!r}"
