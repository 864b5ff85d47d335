"""`python -m serve [serve]`: read the settings, then run gunicorn in this process (its master)."""
from __future__ import annotations

import logging
import sys

from .gpus import visible_gpus
from .settings import Settings, SettingsError, markdown_table

USAGE = """usage: serve [serve | --help]

Serves the Wav2Vec2 CTC model in $OPT_ML/model (default /opt/ml/model) on port 8080
($SAGEMAKER_BIND_TO_PORT): GET /ping, POST /invocations, GET /execution-parameters.

Environment variables:
"""


def main(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE + markdown_table())
        return 0
    if argv not in ([], ["serve"]):
        print(USAGE.split("\n\n", 1)[0], file=sys.stderr)
        print(f"serve: unexpected arguments {argv!r} (try --help)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] [%(levelname)s] %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 2
    # Checks that need no torch, in the master, before any worker forks: a clear message at once.
    from common import modeldir

    if not settings.model_dir.is_dir():
        print(f"serve: no model in {settings.model_dir}: SageMaker extracts model.tar.gz there; natively, set "
              "OPT_ML to a folder whose model/ holds the training output", file=sys.stderr)
        return 2
    try:
        found = modeldir.find(settings.model_dir)
        modeldir.ctc_class_name(modeldir.read_config(found), serving=True)
    except modeldir.ModelDirError as exc:
        print(f"serve: cannot serve the model in {settings.model_dir} (OPT_ML={settings.opt_ml}): {exc}",
              file=sys.stderr)
        return 2
    from .server import Server

    Server(settings, visible_gpus()).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
