"""Run deploy/sym/impl.py the way Sym's flow runtime does: compiled by RestrictedPython.

compile_restricted_exec with the default policy, then executed with RestrictedPython's standard
guards and nothing more:

  __builtins__             safe_builtins (RestrictedPython.Guards) plus a restricted __import__
                           that allows only sym.sdk..., requests, json and datetime
  _getattr_                safer_getattr           (RestrictedPython.Guards)
  _getitem_                default_guarded_getitem (RestrictedPython.Eval)
  _getiter_                default_guarded_getiter (RestrictedPython.Eval)
  _iter_unpack_sequence_   guarded_iter_unpack_sequence
  _unpack_sequence_        guarded_unpack_sequence
  _write_                  full_write_guard

No __metaclass__, _inplacevar_ or _print_ is provided, so a class statement, an augmented
assignment or a print() in impl.py fails here as it could in Sym's runtime. The sym.sdk it
imports is the published package (sym-sdk, tests/requirements.txt); Sym's documented import
allow-list is sym.sdk, requests, json and datetime (docs.symops.com/docs/python-sdk).
"""

import ast

from types import SimpleNamespace

from RestrictedPython import compile_restricted_exec, safe_builtins
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import (
    full_write_guard,
    guarded_iter_unpack_sequence,
    guarded_unpack_sequence,
    safer_getattr,
)

from conftest import SYM_DIR

IMPL_PATH = SYM_DIR / "impl.py"
ALLOWED_TOP_LEVEL = ("json", "datetime", "requests")


def import_allowed(name):
    return name in ALLOWED_TOP_LEVEL or name == "sym.sdk" or name.startswith("sym.sdk.")


class ImportLog:
    """Every import the sandboxed code asked for, and the ones refused."""

    def __init__(self):
        self.asked = []
        self.refused = []

    def guard(self, name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002 - __import__'s signature
        self.asked.append(name)
        if level != 0 or not import_allowed(name):
            self.refused.append(name)
            raise ImportError("import of %r is not allowed in the Sym runtime" % name)
        return __import__(name, globals, locals, fromlist, level)


def compile_impl():
    """RestrictedPython's verdict on impl.py (default policy): .code, .errors, .warnings."""
    return compile_restricted_exec(IMPL_PATH.read_text(encoding="utf-8"), filename=str(IMPL_PATH))


def load():
    """impl.py executed in the sandbox: (namespace of its globals, ImportLog).

    Functions defined there keep running under the guards when a test calls them; a test can
    change a module constant (e.g. DELIVERY_BACKOFF_SECONDS) through the returned `globals`.
    """
    result = compile_impl()
    if result.errors:
        raise AssertionError("RestrictedPython refused impl.py:\n" + "\n".join(result.errors))
    imports = ImportLog()
    builtins = dict(safe_builtins)
    builtins["__import__"] = imports.guard
    sandbox_globals = {
        "__builtins__": builtins,
        "__name__": "impl_sandboxed",
        "_getattr_": safer_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": full_write_guard,
    }
    exec(result.code, sandbox_globals)  # noqa: S102 - this is the sandbox
    return SimpleNamespace(globals=sandbox_globals, imports=imports, **{
        k: v for k, v in sandbox_globals.items() if not k.startswith("_")
    })


def handlers():
    """{name: kind} of every top-level function of impl.py decorated with @hook or @reducer.

    (sym-sdk's decorators return the function unchanged, so the decorators are read from the
    source.)
    """
    tree = ast.parse(IMPL_PATH.read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Name) and decorator.id in ("hook", "reducer"):
                    found[node.name] = decorator.id
    return found
