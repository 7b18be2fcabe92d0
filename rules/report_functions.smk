# Helpers of rules/report.smk (kept apart from the rules, as `snakemake --lint` asks).

REPORT = "results/report"


def report_outputs():
    """The report's own tables and grids (`snakemake --report` adds the stages' marked outputs)."""
    tables = ["split_summary.html", "image_quality.html", "classifier_regimes.html"]
    return [*(f"{REPORT}/{name}" for name in tables), f"{REPORT}/real_vs_synthetic"]
