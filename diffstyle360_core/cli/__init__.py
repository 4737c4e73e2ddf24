"""The command line: argument parsing, output folders, locks and signals.

Nothing here is the method; the ComfyUI nodes never import this package.
``python -m diffstyle360_core --help`` lists the commands.
"""
