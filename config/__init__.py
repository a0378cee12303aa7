"""The data amic ships, installed as the package ``amic_config``.

The repository keeps it in ``config/`` (the layout users and the docs refer to);
``pyproject.toml`` maps that folder to ``amic_config``, so an installed amic finds the
profiles, the example configuration and ledger, the Grafana board and the systemd unit
with ``importlib.resources.files("amic_config")`` (see ``collector/config/shipped.py``).
"""
