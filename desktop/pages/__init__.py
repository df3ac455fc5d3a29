"""The window's pages: each a view over the open project."""
