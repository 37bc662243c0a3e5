"""Write the MAP manifests (app.json, pkg.json) the way holoscan-cli 4.2's packager writes them.

Run with the packager installed (a separate environment: ``make package-venv``):

    .venv-package/bin/python deploy/map_manifests.py --out deploy/map

It uses the packager's own code: ``ApplicationConfiguration`` reads app.yaml (so a key the packager does not read,
such as ``inputFormats``, is not in the result), ``PackageBuildParameters`` holds its defaults (the MAP layout)
and derives the command from the application folder, and ``Models`` finds the model folders. What the packager
would learn from NVIDIA's artifact list over the network (the SDK and platform) is given here: the MONAI Deploy
App SDK version we pin and the x86_64 dGPU platform. The image copies the two files to /etc/holoscan/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from holoscan_cli.common.enum_types import SdkType
from holoscan_cli.packager.config_reader import ApplicationConfiguration
from holoscan_cli.packager.models import Models
from holoscan_cli.packager.parameters import PackageBuildParameters

REPO = Path(__file__).resolve().parents[1]
MONAI_DEPLOY_APP_SDK_VERSION = "4.0.0"
PLATFORM_CONFIG = "dgpu"


def manifests(app_yaml: Path, models: Path) -> tuple[dict[str, object], dict[str, object]]:
    """app.json and pkg.json for GadSynth's application folder (deploy/map/__main__.py) and models."""
    with tempfile.TemporaryDirectory() as scratch:
        application = Path(scratch) / "app"
        application.mkdir()
        shutil.copy(REPO / "deploy" / "map" / "__main__.py", application / "__main__.py")
        parameters = PackageBuildParameters()
        parameters.application = application  # a folder with __main__.py: a Python module application
        parameters.models = Models().build(models)
        parameters.timeout = 0
        configuration = ApplicationConfiguration()
        configuration.read(app_yaml)
        parameters.version = None
        app_manifest = configuration.populate_app_manifest(parameters)
        package_manifest = configuration.populate_package_manifest(parameters)
    app_manifest.sdk = SdkType.MonaiDeploy.value
    app_manifest.sdk_version = MONAI_DEPLOY_APP_SDK_VERSION
    package_manifest.platform_config = PLATFORM_CONFIG
    # Paths become strings exactly as json.dumps(..., default=str) would; the packager's own objects hold Path.
    app_data = json.loads(json.dumps(app_manifest.data, default=str))
    package_data = json.loads(json.dumps(package_manifest.data, default=str))
    return app_data, package_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "app.yaml")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, default=REPO / "deploy" / "map")
    args = parser.parse_args()
    app_data, package_data = manifests(args.config, args.models)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "app.json").write_text(json.dumps(app_data, indent=2) + "\n", encoding="utf-8")
    (args.out / "pkg.json").write_text(json.dumps(package_data, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
