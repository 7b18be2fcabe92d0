"""What every stage shares: errors, the command-line runner, devices, seeds, atomic outputs and provenance,
checkpoints, the manifest schema, model cards, tiny stand-in models, typed settings and figures."""
