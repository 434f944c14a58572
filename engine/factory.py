"""A user's own code, named "module:function" in the config: imported, called, errors shown as theirs.

The config's folder and the current directory are importable. A failure inside the user's code
is a UserError that carries the user's own traceback (our frames left out), so it prints
without ours and exits 2.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from .errors import UserError

_OURS = str(Path(__file__).resolve().parent)
_IMPORTLIB = str(Path(importlib.__file__).resolve().parent)


# What the user's code may raise that is theirs to show: any exception, and GeneratorExit (a
# BaseException), but not an interrupt. sys.exit is caught apart, to say a factory must not exit.
THEIRS = (Exception, GeneratorExit)


def their_traceback(e: BaseException) -> str:
    """The traceback of `e` with traintop's and importlib's frames left out."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith((_OURS, _IMPORTLIB, "<frozen importlib"))]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(e), e)
    return "Traceback (most recent call last):\n" + "".join(lines).rstrip()


def load_factory(spec: str, key: str, base_dir: Path) -> Callable:
    """The function that `spec` ("module:function") names; `key` is the config key, for messages."""
    module_name, _, function = spec.partition(":")
    if module_name.endswith(".py") or not all(part.isidentifier() for part in [*module_name.split("."), function]):
        raise UserError(f'{key} is {spec!r}; give "module:function" as Python imports it (no ".py", no '
                        'folder), e.g. "my_data:make_datasets", with my_data.py next to the config')
    for folder in (str(Path.cwd()), str(Path(base_dir).resolve())):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    cached = sys.modules.get(module_name)
    mine = Path(base_dir).resolve() / (module_name.replace(".", "/") + ".py")
    if cached is not None and mine.is_file() and Path(getattr(cached, "__file__", "") or "") != mine:
        del sys.modules[module_name]  # another config's module of the same name was imported first
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name.split(".")[0]:
            raise UserError(f"{key}: module {module_name!r} was not found; put {module_name}.py next to "
                            f"the config ({base_dir}) or in the current folder") from None
        raise UserError(f"{key}: importing {module_name!r} failed:\n{their_traceback(e)}") from None
    except THEIRS as e:  # any error in the user's module is theirs to see
        raise UserError(f"{key}: importing {module_name!r} failed:\n{their_traceback(e)}") from None
    except SystemExit as e:  # traintop must not end, as if it had finished, without a run
        raise UserError(f"{key}: importing {module_name!r} called sys.exit({e.code!r}); a module named "
                        "in the config must not exit") from None
    fn = getattr(module, function, None)
    if fn is None or not callable(fn):
        raise UserError(f"{key}: {module_name!r} has no function {function!r}")
    return fn


def call_factory(fn: Callable, key: str, *args) -> Any:
    """Call the user's function; an exception in it is shown with the user's traceback."""
    try:
        return fn(*args)
    except UserError:
        raise
    except THEIRS as e:  # their code, their error
        raise UserError(f"{key}: {getattr(fn, '__name__', 'the factory')}() failed:\n{their_traceback(e)}") from None
    except SystemExit as e:  # traintop must not end, as if it had finished, without a run
        raise UserError(f"{key}: {getattr(fn, '__name__', 'the factory')}() called sys.exit({e.code!r}) "
                        "instead of returning; a factory must return what it makes") from None
