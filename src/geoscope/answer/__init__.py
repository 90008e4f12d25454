"""What a person reads, decided once: the best answer, guesses, refiners, coverage, calibration."""
