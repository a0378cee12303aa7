"""``amic api-token``: a new HTTP API token, and the lines for the secrets file."""

from __future__ import annotations

import secrets

import click

from collector.config.secrets import API_ROLES, token_hash

TOKEN_BYTES = 32


def new_token() -> str:
    """A random bearer token (256 bits, URL-safe)."""
    return "amic_" + secrets.token_urlsafe(TOKEN_BYTES)


@click.command("api-token")
@click.argument("name")
@click.option("--role", type=click.Choice(API_ROLES), required=True,
              help="viewer: reads, personal data masked; operator: commands on meters "
                   "that are not protected; admin: ledger import, protected meters, "
                   "personal data in full.")
@click.option("--operator", default=None, metavar="NAME",
              help="The [operators] entry whose operator code its commands send "
                   "(default: NAME).")
def api_token(name: str, role: str, operator: str | None) -> None:
    """Make a bearer token NAME for the HTTP API.

    Prints the token once (on standard output; it is kept nowhere) and, on standard
    error, the table to add to the secrets file, which holds only its SHA-256.  The
    daemon reads the file again when it changes: no restart needed.
    """
    token = new_token()
    click.echo(token)
    lines = [f"[api_tokens.{name}]", f'hash = "{token_hash(token)}"', f'role = "{role}"']
    if operator is not None:
        lines.append(f'operator = "{operator}"')
    click.echo("\n# add to the secrets file (chmod 600); the token above is not kept:\n"
               + "\n".join(lines), err=True)
