"""The ``geoscope`` command line: one subcommand per step of the pipeline."""
