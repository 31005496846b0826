"""The package capability: installed packages per scope (host, containers) and which are in use."""
