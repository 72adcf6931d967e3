"""The OHIF bundle for the image, in a build stage of its own (Containerfile): what
`manage.py install_ohif` does, without Django, so that the download and the precompression
are redone only when ohif-bundle.json, the installer or the sub-path change, not with every
change of the app's code.

    python deploy/install_ohif_bundle.py ROOT BASE_PATH

The asset prefix is the one settings.py derives (OHIF_ASSET_URL: <sub-path>/static/ohif/
<version>-<install format>/); a mismatch shows at run time (system check launcher.E004,
/readyz 503).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import requests

from launcher import ohif_bundle


def main(root: str, base_path: str) -> None:
    spec = ohif_bundle.load_spec(Path("ohif-bundle.json"))
    prefix = f"{base_path.rstrip('/')}/static/ohif/{spec.asset_directory}/"
    registry = os.environ.get("NPM_REGISTRY_URL", "https://registry.npmjs.org").rstrip("/")
    with requests.Session() as session:
        session.headers["User-Agent"] = "kheops-ohif install_ohif (image build)"
        result = ohif_bundle.install(
            spec, root=Path(root), asset_prefix=prefix, registry_url=registry,
            session=session, progress=False, log=print,
        )  # fmt: skip
    print(f"OHIF {result.bundle.version} installed under {result.bundle.asset_prefix}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
