import subprocess
import sys

import pytest

import cca_monitor


@pytest.mark.parametrize("name", cca_monitor.__all__)
def test_every_public_name_resolves(name):
    assert getattr(cca_monitor, name) is not None


def test_unknown_name_raises():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cca_monitor.nope  # noqa: B018


@pytest.mark.parametrize(
    "module",
    [
        "cca_monitor.similarity",
        "cca_monitor.layout",
        "cca_monitor.schedule",
        "cca_monitor.capture",
        "cca_monitor.storage",
        "cca_monitor.convergence",
    ],
)
def test_core_modules_do_not_import_lightning_or_tensorboard(module):
    code = (
        f"import sys, {module}; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'tensorboard', 'matplotlib')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_version_is_a_string():
    assert isinstance(cca_monitor.__version__, str)
    assert cca_monitor.__version__ != "0.0.0"
