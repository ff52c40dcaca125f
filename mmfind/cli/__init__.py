"""The command line: parses arguments, calls the core, renders results. Nothing else."""
