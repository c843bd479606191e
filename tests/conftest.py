import os
import sys

import pytest

# Never touch the network: every model in the suite is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# "import krita" in the plugin tests is the fake (tests/plugin_unit/krita.py), whichever test module
# imports it first: a module on the path wins over the tests/krita/ folder (the real-Krita harness).
sys.path.append(os.path.join(ROOT, "tests", "plugin_unit"))


@pytest.fixture(scope="session")
def tiny_components():
    from smd_daemon.engine.models import load_model

    return load_model("tiny")


@pytest.fixture
def engine(tiny_components):
    from smd_daemon.engine.core import Engine

    return Engine(tiny_components)
