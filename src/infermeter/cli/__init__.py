"""The ``infermeter`` command line: thin commands; the one place errors become exit codes."""
