"""Sub-commands of the ``archer`` CLI (see archer.cli)."""
