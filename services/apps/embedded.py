"""The embedded pattern: the consuming application with the model loaded in-process.

    python -m services.apps.embedded          (settings from EMBEDDED_* environment variables)

No network hop to a model: the ONNX artifact ships with the app and is loaded at start-up;
/readyz turns 200 once it is. See patterns/embedded/README.md.
"""

from __future__ import annotations

from starlette.applications import Starlette

from services.apps.api import build_app
from services.apps.backend import LocalBackend
from services.core.http import serve
from services.core.logging import configure_logging
from services.core.repository import version_dir
from services.core.runtime import OnnxModel, RuntimeOptions
from services.core.settings import ModelSettings, settings_config


class EmbeddedSettings(ModelSettings):
    """Settings of the embedded app; environment variables are prefixed EMBEDDED_."""

    model_config = settings_config("EMBEDDED_")


def create_app(settings: EmbeddedSettings) -> Starlette:
    path = version_dir(settings.model_repository, settings.model_name, settings.model_version)
    model = OnnxModel.from_dir(path, RuntimeOptions(settings.intra_op_threads, settings.inter_op_threads))
    return build_app(
        LocalBackend(model),
        app_name="embedded",
        max_body_bytes=settings.max_body_bytes,
        max_batch_size=settings.max_batch_size,
        range_policy=settings.range_policy,
        range_margin=settings.range_margin,
    )


def main() -> None:
    settings = EmbeddedSettings()
    configure_logging("embedded", settings.log_level)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
