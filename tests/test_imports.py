"""Every module of the package imports (upstream once shipped a module that did not even parse)."""
import importlib
import pkgutil

import pytest

import worldtune

# __main__ runs the CLI on import (`python -m worldtune`); the CLI tests cover it.
MODULES = sorted(m.name for m in pkgutil.walk_packages(worldtune.__path__, "worldtune.")
                 if m.name != "worldtune.__main__")


def test_the_package_has_the_expected_subpackages():
    for name in ("worldtune.model", "worldtune.data", "worldtune.loss", "worldtune.engine", "worldtune.eval",
                 "worldtune.export", "worldtune.cli"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    importlib.import_module(name)
