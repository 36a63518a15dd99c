"""The licence every artefact declares is the one the repository ships."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# md5 of the Apache Software Foundation's LICENSE-2.0.txt, byte for byte.
APACHE_2_0_MD5 = "3b83ef96387f14655fc854ddc3c6bd57"


def test_the_repository_ships_the_apache_2_0_text_that_everything_declares():
    assert hashlib.md5((ROOT / "LICENSE").read_bytes()).hexdigest() == APACHE_2_0_MD5
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    chart = yaml.safe_load((ROOT / "charts" / "canaria" / "Chart.yaml").read_text())
    assert chart["annotations"]["artifacthub.io/license"] == "Apache-2.0"
    for dockerfile in (ROOT / "images").glob("*/Dockerfile"):
        assert re.search(r'org\.opencontainers\.image\.licenses="Apache-2\.0"', dockerfile.read_text()), dockerfile
