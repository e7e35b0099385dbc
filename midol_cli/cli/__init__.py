"""The thin command-line layer: parse, validate, call one core function, print a summary."""
