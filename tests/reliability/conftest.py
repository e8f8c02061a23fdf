"""Fixtures for the reliability tests (issue 9): the service tests' servers and stores.

The fixtures are the ones in ``tests/service/conftest.py`` (``model_template``, ``store_dir``,
``start_server``, ``server``, ``channel``, ``stub``), imported rather than written again; the
helpers in ``tests/service/serving_helpers.py`` and the soak driver in
``benchmarks/soak.py`` are importable from every module here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT / "tests" / "service", ROOT / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

_spec = importlib.util.spec_from_file_location(
    "service_conftest", ROOT / "tests" / "service" / "conftest.py")
_service_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_service_conftest)

model_template = _service_conftest.model_template
store_dir = _service_conftest.store_dir
start_server = _service_conftest.start_server
server = _service_conftest.server
channel = _service_conftest.channel
stub = _service_conftest.stub
