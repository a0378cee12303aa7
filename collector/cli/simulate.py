"""``amic simulate`` (being written)."""

import click


@click.group()
def simulate() -> None:
    """Run meter simulators."""
