"""The import rule of docs/ARCHITECTURE.md, checked on the source with `ast`.

Every module of buidl_edge is parsed (never imported) and every import of ours is checked, at any
level: at the top, inside a function (a late import is still a dependency, only a later one), and
under `if TYPE_CHECKING:` (a type named from a higher layer couples the two all the same, and
mypy follows it; the cure is a Protocol or an alias in the lower layer, not a hidden import).

Where the code breaks the rule today, the pair is listed in EXCEPTIONS with its reason; an
exception that no longer happens fails too, so the list only shrinks.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "buidl_edge"
ROOT = "buidl_edge"
MAX_LINES = 400

# Pure modules anything may import; they import only each other (or nothing of ours).
LEAVES = frozenset({
    "buidl_edge.socketmode.wsframes",
    "buidl_edge.socketmode.protocol",
    "buidl_edge.socketmode.backoff",
    "buidl_edge.delivery.ratelimit",
    "buidl_edge.api.message",
    "buidl_edge.store.errors",
    # The store's protocols and its records (Reply, OutboxRow, DeliveryOutcome): data, no I/O.
    "buidl_edge.store.base",
    "buidl_edge.store.owners",
    "buidl_edge.ops.statefiles",
    "buidl_edge.ops.health_events",
    "buidl_edge.runtime.exitcodes",
    "buidl_edge.observability.latency",
    "buidl_edge.observability.redaction",
})
LEAF_PACKAGES = ("buidl_edge.config",)  # the whole package, its __init__ included

# Higher may import lower or its own layer; never upwards. "" is the package root (buidl_edge,
# buidl_edge.__main__): the public face, on top with the examples written against it. The relay
# and a Bolt app are targets like dispatch's handlers (relay/target.py and bolt/target.py implement
# dispatch's Target), so they sit beside dispatch; dispatch never imports them (two packages never
# import each other).
LAYERS: dict[str, int] = {
    "": 8, "examples": 8,
    "cli": 7,
    "sandbox": 6,
    "ops": 5, "runtime": 5,
    "dispatch": 4, "relay": 4, "bolt": 4,
    "socketmode": 3, "api": 3, "delivery": 3,
    "store": 2,
    "webapi": 1, "observability": 1,
    "config": 0,
}

SIMULATOR = "buidl_edge.sandbox.simulator"
SIMULATOR_MAY_IMPORT = frozenset({"buidl_edge.socketmode.protocol"})
LINKS = "buidl_edge.socketmode"
HANDLER_PACKAGES = frozenset({"api", "dispatch", "relay", "bolt"})

# (importer, imported): why the rule is broken there today. Each should go, not grow.
EXCEPTIONS: dict[tuple[str, str], str] = {}
OVERSIZE: dict[str, str] = {}


LEAF_RULE = "a leaf imports only leaves"
LEAF_PACKAGE_RULE = "a leaf's package loads only leaves"
LAYER_RULE = "dependencies point down"
SIMULATOR_RULE = "the simulator imports nothing of the client but the protocol"
LINK_RULE = "a link never imports handlers"


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    where: str  # "top", "function" or "TYPE_CHECKING"

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.imported} ({self.where})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


MODULES = all_modules()


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def resolve(name: str, known: dict[str, Path]) -> str:
    """The module of ours that `name` loads: the longest prefix that is a module we have."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(importer: str, source: str, is_package: bool, known: dict[str, Path]) -> list[Import]:
    found: list[Import] = []

    def add(target: str, node: ast.stmt, where: str) -> None:
        if target == ROOT or target.startswith(ROOT + "."):
            imported = Import(importer, resolve(target, known), node.lineno, where)
            if imported.imported != importer and imported not in found:
                found.append(imported)

    def visit(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, where)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = importer.split(".") if is_package else importer.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
            for alias in node.names:
                # `from pkg import mod` loads pkg.mod; `from mod import name` loads mod.
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base, node, where)
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.body:
                visit(child, "TYPE_CHECKING")
            for child in node.orelse:
                visit(child, where)
        else:
            inner = "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else where
            for part in ast.iter_child_nodes(node):
                visit(part, inner)

    visit(ast.parse(source), "top")
    return found


def all_imports() -> list[Import]:
    return [
        found
        for name, path in MODULES.items()
        for found in imports_of(name, path.read_text(encoding="utf-8"), path.name == "__init__.py", MODULES)
    ]


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else ""


def is_leaf(module: str) -> bool:
    return module in LEAVES or any(module == p or module.startswith(p + ".") for p in LEAF_PACKAGES)


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def leaf_packages() -> set[str]:
    """The packages on the way to a leaf: importing the leaf runs their __init__ first."""
    return {leaf.rsplit(".", depth)[0] for leaf in LEAVES for depth in range(1, leaf.count(".") + 1)}


def broken_rules(found: Import) -> list[str]:
    """Which rules of docs/ARCHITECTURE.md this one import breaks (empty: it keeps them all)."""
    broken = []
    a, b = found.importer, found.imported
    if is_leaf(a) and not is_leaf(b):
        broken.append(LEAF_RULE)
    if found.where == "top" and a in leaf_packages() and not is_leaf(b):
        broken.append(LEAF_PACKAGE_RULE)
    if not is_leaf(a) and not is_leaf(b) and LAYERS[package_of(a)] < LAYERS[package_of(b)]:
        broken.append(f"{LAYER_RULE}: {package_of(a) or ROOT} is below {package_of(b) or ROOT}")
    if within(a, SIMULATOR) and not within(b, SIMULATOR) and b not in SIMULATOR_MAY_IMPORT:
        broken.append(SIMULATOR_RULE)
    if within(a, LINKS) and package_of(b) in HANDLER_PACKAGES:
        broken.append(LINK_RULE)
    return broken


def package_cycles(imports: list[Import]) -> set[tuple[str, str]]:
    """Pairs of packages that reach each other through imports between non-leaf modules."""
    edges: dict[str, set[str]] = {}
    for found in imports:
        a, b = package_of(found.importer), package_of(found.imported)
        if a != b and not is_leaf(found.imported):
            edges.setdefault(a, set()).add(b)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reached = {package: reach(package) for package in edges}
    return {(a, b) for a in reached for b in reached[a] if a < b and a in reached.get(b, set())}


def unlisted(found: Import) -> bool:
    return (found.importer, found.imported) not in EXCEPTIONS


IMPORTS = all_imports()
UNLISTED = [found for found in IMPORTS if unlisted(found)]


def still_needed(pair: tuple[str, str]) -> bool:
    """An exception is needed while the import breaks a rule, or closes a cycle on its own."""
    imports = [found for found in IMPORTS if (found.importer, found.imported) == pair]
    return any(broken_rules(found) for found in imports) or (
        bool(imports) and bool(package_cycles(UNLISTED + imports)))


def breaking(*rules: str) -> list[str]:
    """The imports not listed in EXCEPTIONS that break one of `rules`, with the rule they break."""
    return [f"{found}: {rule}" for found in UNLISTED for rule in broken_rules(found) if rule.startswith(rules)]


def test_every_package_has_a_layer() -> None:
    assert sorted({package_of(m) for m in MODULES} - set(LAYERS)) == []


def test_the_leaves_exist_and_import_only_leaves() -> None:
    assert sorted(LEAVES - set(MODULES)) == []
    assert breaking(LEAF_RULE, LEAF_PACKAGE_RULE) == []


def test_dependencies_point_down_the_layers() -> None:
    assert breaking(LAYER_RULE) == []


def test_packages_never_import_each_other_both_ways() -> None:
    assert package_cycles(UNLISTED) == set()


def test_the_simulator_imports_nothing_of_the_client_but_the_protocol() -> None:
    assert breaking(SIMULATOR_RULE) == []


def test_links_never_import_handlers() -> None:
    assert breaking(LINK_RULE) == []


def test_every_exception_still_happens() -> None:
    assert [pair for pair in EXCEPTIONS if not still_needed(pair)] == []
    assert sorted(m for m in OVERSIZE if len(MODULES[m].read_text(encoding="utf-8").splitlines()) <= MAX_LINES) == []


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: lines for name, path in MODULES.items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES and name not in OVERSIZE
    }
    assert long == {}


def test_the_package_root_holds_only_its_entry_points_and_packages() -> None:
    stray = [
        entry.name for entry in PACKAGE_DIR.iterdir()
        if entry.name != "__pycache__"
        and not (entry.is_file() and entry.name in {"__init__.py", "__main__.py"})
        and not (entry.is_dir() and (entry / "__init__.py").is_file())
    ]
    assert stray == []


FORBIDDEN_EVERY_WAY = """
from __future__ import annotations
from typing import TYPE_CHECKING
import json
from buidl_edge.socketmode import protocol
from . import backoff
if TYPE_CHECKING:
    from buidl_edge.store.slots import SlotGate
def later() -> None:
    import buidl_edge.dispatch.ack_path
class Framer:
    def read(self) -> None:
        from ..api.app import EdgeApp
"""


def test_the_checker_sees_imports_at_every_level() -> None:
    """The rule can fail: wsframes (a leaf, and in the links' package) importing the store under
    TYPE_CHECKING, a handler inside a function and the API relatively from a method is caught at
    each spot; the leaves it may import, absolutely or relatively, pass."""
    found = imports_of("buidl_edge.socketmode.wsframes", FORBIDDEN_EVERY_WAY, False, MODULES)
    assert {(f.imported, f.where): broken_rules(f) for f in found} == {
        ("buidl_edge.socketmode.protocol", "top"): [],
        ("buidl_edge.socketmode.backoff", "top"): [],
        ("buidl_edge.store.slots", "TYPE_CHECKING"): [LEAF_RULE],
        ("buidl_edge.dispatch.ack_path", "function"): [LEAF_RULE, LINK_RULE],
        ("buidl_edge.api.app", "function"): [LEAF_RULE, LINK_RULE],
    }


@pytest.mark.parametrize(("importer", "imported", "where", "rule"), [
    ("buidl_edge.store.slots", "buidl_edge.dispatch.targets", "top", f"{LAYER_RULE}: store is below dispatch"),
    ("buidl_edge.dispatch.handlers", "buidl_edge", "function", f"{LAYER_RULE}: dispatch is below buidl_edge"),
    ("buidl_edge.sandbox.simulator.hub", "buidl_edge.socketmode.wsframes", "top", SIMULATOR_RULE),
    ("buidl_edge.socketmode.connection", "buidl_edge.relay.target", "function", LINK_RULE),
    ("buidl_edge.ops.health_events", "buidl_edge.ops.status", "TYPE_CHECKING", LEAF_RULE),
    ("buidl_edge.observability", "buidl_edge.observability.sentry", "top", LEAF_PACKAGE_RULE),
])
def test_each_rule_refuses_its_forbidden_import(importer: str, imported: str, where: str, rule: str) -> None:
    assert rule in broken_rules(Import(importer, imported, 1, where))


def test_a_cycle_between_packages_is_found() -> None:
    imports = [Import("buidl_edge.webapi.client", "buidl_edge.observability.logs", 1, "top"),
               Import("buidl_edge.observability.sentry", "buidl_edge.webapi.http", 1, "function")]
    assert package_cycles(imports) == {("observability", "webapi")}


def test_slack_bolt_is_imported_only_for_a_bolt_app() -> None:
    """Bolt is an optional extra: a worker, `check` and the CLI load no slack_bolt for an EdgeApp
    (a real interpreter, importing what the `worker` command imports and loading an EdgeApp)."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "import buidl_edge.cli, buidl_edge.cli.checks, buidl_edge.runtime.start, buidl_edge.runtime.worker\n"
             "from buidl_edge.bolt.loading import load_edge_or_bolt_app\n"
             "app = load_edge_or_bolt_app('buidl_edge.api.bot:app')\n"
             "print(type(app).__name__, sorted(m for m in sys.modules if m.startswith('slack_bolt')))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         cwd=PACKAGE_DIR.parent)
    assert out.stdout.split() == ["EdgeApp", "[]"], out.stderr
