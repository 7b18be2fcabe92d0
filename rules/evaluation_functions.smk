# Helper functions of the image-quality evaluation (rules/evaluation.smk): config lookups and input functions.

EVALUATION = config["evaluation"]
TINY_EXTRACTOR = "results/models/tiny_dinov2"


def evaluation_outputs():
    """The end products of the image-quality evaluation."""
    return ["results/fid.json", "results/fid_per_class.csv"]


def extractor_files():
    """The extractor's local file or folder as an input (tiny model, Inception weights, local folder)."""
    if EVALUATION["extractor"] == "tiny":
        return [TINY_EXTRACTOR]
    if EVALUATION["extractor"] == "inception-v3-compat":
        return [EVALUATION["weights"]] if EVALUATION["weights"] else []
    return [EVALUATION["model"]] if Path(EVALUATION["model"]).is_dir() else []


def extractor_option(wildcards, input):
    """--extractor-path for an extractor the workflow tracks as an input; nothing otherwise."""
    return f"--extractor-path {input.extractor}" if input.extractor else ""
