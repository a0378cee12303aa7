"""amic: the collector daemon, its stores, scheduler, commands and CLI."""
