"""The ``geoscope`` command line: one subcommand per step of the pipeline."""

from ..distributed import idle_threads_sleep_soon

idle_threads_sleep_soon()  # before any command imports torch, whose OpenMP reads it once
