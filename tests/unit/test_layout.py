"""The package's shape: modules that need no TensorFlow or matplotlib don't import them, and no module
takes a top-level import name that another installed package uses."""
import os
import subprocess
import sys

import pytest
from helpers import ROOT

# Flags, files, task maths and reading data: instant to import, so flag errors come at once.
LIGHT_MODULES = ["config", "tfhub_classifier.cli", "tfhub_classifier.hardware", "tfhub_classifier.files",
                 "tfhub_classifier.tasks", "tfhub_classifier.data.split", "tfhub_classifier.data.class_folders",
                 "tfhub_classifier.data.user_files", "tfhub_classifier.data.imdb",
                 "tfhub_classifier.inference.metrics", "tfhub_classifier.serving.batching",
                 "tfhub_classifier.serving.protocol", "tfhub_classifier.serving.servable",
                 "tfhub_classifier.serving.rest_api", "tfhub_classifier.serving.connections",
                 "train", "evaluate", "predict", "serve", "export"]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_importing_leaves_tensorflow_and_matplotlib_out(module):
    check = (f"import sys; import {module}; heavy = sorted(m for m in sys.modules "
             "if m.split('.')[0] in ('tensorflow', 'tf_keras', 'matplotlib')); print(heavy); assert not heavy")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_the_root_holds_only_the_scripts_and_config():
    modules = sorted(name for name in os.listdir(ROOT) if name.endswith(".py"))
    assert modules == ["config.py", "evaluate.py", "export.py", "predict.py", "serve.py", "train.py"]


def test_the_package_takes_no_name_an_installed_package_has():
    """With the repository root on sys.path, the library's one top-level name must not shadow a package
    installed beside it. The scripts keep their names (users run them as files), config.py the layout's."""
    from importlib import metadata
    installed = {name.replace("-", "_").lower() for dist in metadata.distributions()
                 for name in [dist.metadata["Name"], *(dist.read_text("top_level.txt") or "").split()] if name}
    assert "tensorflow" in installed  # the check sees what is installed
    assert "tfhub_classifier" not in installed
    assert [name for name in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, name, "__init__.py"))] == [
        "tfhub_classifier"]


def test_the_readme_layout_names_every_module():
    """A newcomer reads the package's map in README's layout table: no module may be missing from it."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    table = text[text.index("## Layout"):]
    table = table[:table.index("\n## ", 3)]
    package = os.path.join(ROOT, "tfhub_classifier")
    modules = sorted(os.path.relpath(os.path.join(folder, name), package) for folder, _, names in os.walk(package)
                     for name in names if name.endswith(".py") and name != "__init__.py")
    assert modules and [module for module in modules if f"`{module}`" not in table] == []
