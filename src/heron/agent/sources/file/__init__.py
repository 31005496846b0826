"""File integrity collectors: real-time changes with their writer, and baseline scans."""
