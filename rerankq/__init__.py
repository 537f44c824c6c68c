"""rerankq: distributed, queue-based multimodal reranking (see the README).

One installed package. Its subpackages live in the repository's top-level folders (``pyproject.toml``'s
``package-dir``): ``rerankq.worker`` in ``workers/``, ``rerankq.client`` in ``producer/``, ``rerankq.models`` in
``reranker/``, ``rerankq.media`` in ``media/``, ``rerankq.cli`` in ``cli/``; the modules here are the shared
contract they all build on. Imported from a source checkout, the subpackages are that checkout's folders (a
finder below maps them), so the checkout you run is the code you run, whichever one the environment installed.
"""

from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from typing import Any


class _CheckoutFinder:
    """Finds ``rerankq``'s subpackages in the checkout's folders (import name → folder)."""

    def __init__(self, homes: dict[str, Path]) -> None:
        self.homes = homes

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        home = self.homes.get(fullname)
        if home is None:
            return None
        return spec_from_file_location(fullname, home / "__init__.py", submodule_search_locations=[str(home)])


def _map_checkout() -> None:
    root = Path(__file__).resolve().parent.parent
    config = root / "pyproject.toml"
    if not config.is_file():  # installed: the subpackages are where pip put them
        return
    import tomllib

    try:
        dirs = tomllib.loads(config.read_text())["tool"]["setuptools"]["package-dir"]
    except (KeyError, tomllib.TOMLDecodeError):
        return
    if dirs.get(__name__) != Path(__file__).parent.name:
        return
    homes = {name: root / folder for name, folder in dirs.items() if name != __name__}
    # An editable install's own finder (setuptools') maps the subpackages to *its* checkout: were it left in
    # place, a module this checkout lacks would be found in that one.
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _CheckoutFinder)
                        and not getattr(f, "__module__", "").startswith("__editable___rerankq")]
    sys.meta_path.insert(0, _CheckoutFinder(homes))


_map_checkout()
