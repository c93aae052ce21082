"""`train_bridge`: config, estimate, check (cli_config) and setup, launch, status (cli_launch)."""

from __future__ import annotations

from prep.cli.common import make_app

app = make_app("train_bridge", "Write trainer configs, estimate, check, set up and launch training.")


def _register() -> None:
    from train_bridge import cli_config, cli_launch

    cli_config.register(app)
    cli_launch.register(app)


_register()


def main() -> None:
    app()
