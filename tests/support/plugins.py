"""``pip_install``: a package of tests/fixtures/ installed for real (``pip install --target``)
into a dir the daemon gets on its PYTHONPATH, as a site-packages install would be seen."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent.parent / "fixtures"

def pip_install(package: str, target: Path, tmp: Path) -> None:
    src = tmp / package
    shutil.copytree(FIXTURES / package, src)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=300)
