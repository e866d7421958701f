"""CLI commands of this layer (registered on the `lookalike` group by cli.py)."""

import click


def register(group: click.Group) -> None:
    pass
