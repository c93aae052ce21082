"""`train_bridge`: config, estimate, check (cli_config); setup, launch, status (cli_launch); models get/list (cli_models)."""

from __future__ import annotations

from prep.cli.common import make_app

app = make_app("train_bridge", "Write trainer configs, estimate, check, set up and launch training.")


def _register() -> None:
    from train_bridge import cli_config, cli_launch, cli_models

    cli_config.register(app)
    cli_launch.register(app)
    cli_models.register(app)


_register()


def main() -> None:
    app()


if __name__ == "__main__":  # `python -m train_bridge.cli`, as on a remote box without the console scripts
    main()
