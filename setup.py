"""Ship the committed demo catalog inside the wheel (all other settings live in pyproject.toml).

The checkout keeps one copy of the demo catalog, ``data/demo``. A regular build copies the files
its ``manifest.json`` lists (plus the manifest itself) into the built package as
``clipbranches_widgets/_data/demo``, so an installed package can open the default catalog offline
from any folder. The box index cache ``data/demo/index/`` is not a manifest file and is left out.
An editable install (``pip install -e .``) copies nothing: it reads ``data/demo`` in place
(``clipbranches_widgets.catalog.default``).
"""

import json
import os

from setuptools import setup
from setuptools.command.build_py import build_py

DEMO_SOURCE = os.path.join("data", "demo")
DEMO_TARGET = ("clipbranches_widgets", "_data", "demo")


def demo_catalog_files() -> list:
    """Paths inside ``data/demo`` that make the catalog: manifest.json and every file it lists."""
    manifest_path = os.path.join(DEMO_SOURCE, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise FileNotFoundError(f"{manifest_path} is missing: the wheel ships the demo catalog, so build "
                                "from a checkout (or sdist) that has data/demo")
    with open(manifest_path, encoding="utf-8") as f:
        listed = sorted(json.load(f)["files"])
    return ["manifest.json", *listed]


class build_py_with_demo(build_py):
    """``build_py`` that also copies the demo catalog into the package (skipped when editable)."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        for name, target in self._demo_outputs():
            self.mkpath(os.path.dirname(target))
            self.copy_file(os.path.join(DEMO_SOURCE, name), target)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return outputs + [target for _, target in self._demo_outputs()]

    def _demo_outputs(self):
        root = os.path.join(self.build_lib, *DEMO_TARGET)
        return [(name, os.path.join(root, *name.split("/"))) for name in demo_catalog_files()]


setup(cmdclass={"build_py": build_py_with_demo})
