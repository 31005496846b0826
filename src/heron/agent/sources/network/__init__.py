"""Network collectors: flows attributed to processes, listening sockets, DNS."""
