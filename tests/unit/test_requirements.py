"""The requirements files install from the package registries alone: no index of their own, exact pins."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def requirement_lines(name):
    with open(os.path.join(ROOT, name)) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt", "requirements-bench.txt"])
def test_no_requirements_file_names_an_index(name):
    """An index in the file makes pip ask it for every package, and stall where it is unreachable; an
    index is the user's choice, given on the command line (docs/benchmarks.md names PyTorch's)."""
    for line in requirement_lines(name):
        assert not line.startswith(("-i", "--index-url", "--extra-index-url", "-f", "--find-links")), (name, line)


def test_bench_requirements_are_exact_public_versions():
    """--no-deps installs exactly these; a local version (torch's +cpu) exists on no registry, while a
    plain one matches a local +cpu build in pip's --find-links."""
    for line in requirement_lines("requirements-bench.txt"):
        name, _, version = line.partition("==")
        assert version and "+" not in version, line
