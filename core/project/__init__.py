"""A project: its SQLite store, typed records and the runs made in it."""
