"""The peers' own virtualenv (.venv-peers): libpecos pins numpy<2 and scipy<1.14, which xmr's environment cannot
take, so benchmarks run the peers there as subprocesses and exchange data through files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PEERS_VENV = Path(__file__).resolve().parents[2] / ".venv-peers"
PEER_PACKAGES = ["numpy<2", "scipy<1.14", "scikit-learn", "libpecos==1.2.8", "napkinxc==0.7.2", "hnswlib==0.8.0"]
PEER_MODULES = "import pecos, napkinxc, hnswlib, sklearn"


def peers_python() -> Path:
    """The peers' interpreter, creating the environment or completing its packages on first use."""
    python = PEERS_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    if subprocess.run([str(python), "-c", PEER_MODULES], capture_output=True).returncode:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)
    return python
