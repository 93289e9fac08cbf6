"""The default application as an importable object, for ``serve build graphs.default:app``.

Its arguments are those of ``config/serve_config.yaml`` (the one source of truth), read
when this module is imported — which only ``serve build`` and ``serve run
graphs.default:app`` do; the config file itself uses ``graphs.labeling:build_app``.
"""

from pathlib import Path

import yaml

from graphs.labeling import build_app
from modelship.core.config import LabelingAppArgs

CONFIG = Path(__file__).resolve().parent.parent / "config" / "serve_config.yaml"

app = build_app(
    LabelingAppArgs.model_validate(yaml.safe_load(CONFIG.read_text())["applications"][0]["args"])
)
