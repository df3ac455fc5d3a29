"""Between Qt and core: the open project model, background jobs and workers, thumbnails, edits."""
