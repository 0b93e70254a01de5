from executors.version import __version__
