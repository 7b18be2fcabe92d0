# Helper functions of the prompts stage (rules/prompts.smk): config lookups and input functions.

PROMPTS = "results/prompts"
MEP = config["prompts"]["mep"]
TINY_VIT = "results/models/tiny_vit"


def prompt_outputs():
    """The end products of the prompts stage (cluster report and montages only with the mep strategy)."""
    outputs = [
        *expand(f"{PROMPTS}/{{split}}.parquet", split=["train", "val", "test"]),
        f"{PROMPTS}/prompt_report.json",
        f"{PROMPTS}/train_imagefolder",
    ]
    if "mep" in config["prompts"]["strategies"]:
        outputs += [f"{PROMPTS}/cluster_report.json", f"{PROMPTS}/montages"]
    return outputs


def mep_model_files():
    """The model folder as an input (build_tiny_vit's for `tiny`, or a local folder); none for hub ids."""
    model = TINY_VIT if MEP["model"] == "tiny" else MEP["model"]
    return [model] if model == TINY_VIT or Path(model).is_dir() else []


def mep_model(wildcards, input):
    """What embed_images loads: its model folder input, else prompts.mep.model (a hub id)."""
    return input.model[0] if input.model else MEP["model"]


def embed_settings():
    """What embedding needs of prompts.mep, as JSON (so clustering settings do not re-embed)."""
    outliers = MEP["outliers"]["enabled"]
    keys = {"batch_size": MEP["batch_size"], "shards": MEP["shards"]}
    return as_json(keys | {"outlier_features": outliers})


def cluster_settings():
    """prompts.mep's clustering keys plus prompts.seed and prompts.classes, as JSON."""
    keys = ["k", "k_range", "validity_index", "n_init", "minibatch_size", "outliers"]
    extra = {"seed": config["prompts"]["seed"], "classes": config["prompts"]["classes"]}
    return as_json({key: MEP[key] for key in keys} | extra)


def prompt_settings(wildcards):
    """The prompts section as JSON, of prompts.mep only the template: its embedding and clustering keys
    reach build_prompts through the clusters file, so changing them (e.g. gpus) must not rerun it here.
    (A function, so the templates' {fields} are not taken for wildcards.)"""
    return as_json(config["prompts"] | {"mep": {"template": MEP["template"]}})


def cluster_tables():
    """The clusters table build_prompts reads, only with the mep strategy."""
    if "mep" in config["prompts"]["strategies"]:
        return rules.cluster_embeddings.output.clusters
    return []


def clusters_option(wildcards, input):
    """`--clusters FILE` when build_prompts has a clusters input."""
    return f"--clusters {input.clusters}" if input.clusters else ""
