"""Entry point of the bundled app (PyInstaller runs this file as __main__)."""

import multiprocessing
import sys

from desktop.app import main

if __name__ == "__main__":
    # DataLoader workers of the window's jobs start by forkserver (desktop.app.worker_start_method): in a frozen
    # app those children re-run this binary, which must then act as the worker, not start another window
    multiprocessing.freeze_support()
    sys.exit(main())
