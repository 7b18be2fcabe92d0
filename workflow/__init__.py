"""synthmed: the importable library behind the Snakemake workflow.

One module per concern; rules wire files, ``scripts/`` parse arguments, and the functions here do the work.
"""
