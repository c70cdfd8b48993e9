"""One module per chapter with the experiments that chapter runs; each takes a profile or a config."""
