"""What importing a module pulls in, checked in a fresh interpreter: the harness's pure layers
and the load package import without torch, locust or gevent; the recommender's artifact and data
modules without torch. (tests/unit/test_layer_contracts.py checks the import statements; this
checks what an import really loads, lazy imports and third-party side effects included.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_artifacts_module_does_not_import_torch():
    code = "import sys, system_under_test.artifacts; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_data_module_does_not_import_torch():
    code = "import sys, system_under_test.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_importing_the_load_package_does_not_import_locust_or_gevent():
    code = (
        "import sys, harness.load, harness.load.worker, harness.load.driver, "
        "harness.load.stub; print('locust' in sys.modules or 'gevent' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_pure_layers_import_without_torch_locust_or_the_sut():
    code = (
        "import sys, harness.cli, harness.model.scenario, harness.model.record, "
        "harness.metrics, harness.checks\n"
        "harness.cli.main(['scenarios', 'validate', 'scenarios/primary_kill.yaml'])\n"
        "bad = [m for m in ('torch', 'locust', 'gevent', 'system_under_test') if m in sys.modules]\n"
        "sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
