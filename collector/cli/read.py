"""``amic read`` (being written)."""

import click


@click.command()
def read() -> None:
    """Read quantities from one meter."""
    raise click.ClickException("not yet available")
