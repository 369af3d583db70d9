"""Python source as the size-limited boot hook ships it to the box: the code the box runs, and
nothing else.

vast.ai gives the whole boot hook 16 KB (gzip+base64 packed), and the stdlib-only manifest builder
(rgt/manifest.py) is most of it. The box runs the builder's command line only, so it gets:

* no docstrings and no comments (an `ast` round trip drops both);
* no argparse help texts (`help=`, `description=`, `epilog=`: the box never asks for --help;
  the module's own documentation says what each option does);
* no type annotations (the module has `from __future__ import annotations`: they are never
  evaluated, so the box runs the same code without them);
* only the top-level definitions the module's entry point reaches (`main` through the
  `if __name__ == "__main__":` block), found by following every name each reached statement
  mentions, transitively. What other rgt code imports (`build_manifest`, `write_manifest`, ...)
  but the command line never calls stays behind.

The result is still plain, readable Python: the same statements, in the same order.
"""

from __future__ import annotations

import ast


def strip_docstrings(tree: ast.Module) -> None:
    """Drop the docstring of the module and of every class and function in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            docstring = (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            )
            if docstring:
                node.body = node.body[1:] or [ast.Pass()]


class _AnnotationStripper(ast.NodeTransformer):
    """Removes annotations: of arguments, of return values, and of annotated assignments (one
    with a value becomes a plain assignment; a bare `x: int` has no effect and goes)."""

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.returns = None
        self.generic_visit(node)
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AsyncFunctionDef:
        node.returns = None
        self.generic_visit(node)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.Assign | None:
        if node.value is None:
            return None
        return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)


def strip_annotations(tree: ast.Module) -> None:
    """Drop every type annotation in `tree`, and `from __future__ import annotations` with them.

    Only for a module that imports `annotations` from `__future__` (its annotations are never
    evaluated, so removing them changes nothing the code does)."""
    future = [
        node
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and [alias.name for alias in node.names] == ["annotations"]
    ]
    if not future:
        raise ValueError("strip_annotations needs `from __future__ import annotations`")
    _AnnotationStripper().visit(tree)
    tree.body = [node for node in tree.body if node not in future]
    ast.fix_missing_locations(tree)


# argparse keyword arguments that only document (what --help prints).
_HELP_KEYWORDS = ("help", "description", "epilog")
_ARGPARSE_CALLS = ("ArgumentParser", "add_argument", "add_argument_group", "add_parser")


def strip_help_texts(tree: ast.Module) -> None:
    """Drop the documenting keyword arguments (help, description, epilog) of argparse calls."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        called = node.func
        name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
        if name in _ARGPARSE_CALLS:
            node.keywords = [each for each in node.keywords if each.arg not in _HELP_KEYWORDS]


def _defines(node: ast.stmt) -> set[str]:
    """The names a top-level statement binds; empty for one that only does something."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign):
        return {name.id for target in node.targets for name in _names(target)}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return set()


def _names(node: ast.AST) -> list[ast.Name]:
    return [each for each in ast.walk(node) if isinstance(each, ast.Name)]


def drop_unreached(tree: ast.Module) -> list[str]:
    """Keep only the top-level statements the module's own actions reach; returns the names of
    the definitions dropped.

    A statement that binds nothing (the `if __name__ == "__main__":` block, an augmented
    assignment) always stays, and the names it mentions are reached; a definition stays when a
    kept statement mentions one of its names. A name is mentioned by any `Name` node (attribute
    access starts with one: `os.path` mentions `os`), so a function passed as an argument
    counts as reached. A module that looks names up by string (`globals()`, `getattr(module,
    ...)`) would defeat this: the manifest builder does not."""
    reached: set[str] = set()
    kept = [not _defines(node) for node in tree.body]
    for index, node in enumerate(tree.body):
        if kept[index]:
            reached |= {name.id for name in _names(node)}
    grown = True
    while grown:
        grown = False
        for index, node in enumerate(tree.body):
            if not kept[index] and _defines(node) & reached:
                kept[index] = True
                reached |= {name.id for name in _names(node)}
                grown = True
    dropped = [
        name
        for index, node in enumerate(tree.body)
        if not kept[index]
        for name in sorted(_defines(node))
    ]
    tree.body = [node for index, node in enumerate(tree.body) if kept[index]]
    return dropped


def box_source(source: str, *, filename: str) -> str:
    """`source` (a module run as a script on the box) without documentation (docstrings,
    comments, argparse help), annotations and unreached definitions, as Python text.
    Raises SyntaxError when `source` does not parse."""
    tree = ast.parse(source, filename=filename)
    strip_docstrings(tree)
    strip_annotations(tree)
    strip_help_texts(tree)
    drop_unreached(tree)
    return ast.unparse(tree) + "\n"
