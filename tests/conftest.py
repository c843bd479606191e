import os
import sys

import pytest

# Never touch the network: every model in the suite is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# The plugin's unit tests import the fake ``krita`` (tests/plugin_unit/krita.py) by that name, in whatever
# order their imports are sorted: a module anywhere on the path wins over the tests/krita folder (the
# real-Krita harness), which Python would otherwise take for a namespace package.
PLUGIN_UNIT = os.path.join(ROOT, "tests", "plugin_unit")
if PLUGIN_UNIT not in sys.path:
    sys.path.append(PLUGIN_UNIT)


@pytest.fixture(scope="session")
def tiny_components():
    """The tiny preset as ``serve --model tiny`` loads it: with its random control models."""
    from smd_daemon.options import load_model_from_options

    return load_model_from_options({"model": "tiny"})


@pytest.fixture
def engine(tiny_components):
    from smd_daemon.engine.core import Engine

    return Engine(tiny_components)
