"""MedSSL Studio desktop: a thin PySide6 + pyqtgraph view over ``core``.

Widgets subscribe to model/job events and write back through ``core`` (the project store, the job
engine); no image processing or training logic lives here. Importing this package does not import Qt:
the window is built lazily by :func:`desktop.app.main`.
"""

