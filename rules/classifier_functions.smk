# Helper functions of the classifier stage (rules/classifier.smk): config lookups and input functions.

import re

CLASSIFIER = "results/classifier"
CLS = config["classifier"]
REGIMES = CLS["regimes"]
# Extra training manifests each regime reads (workflow/regimes.py checks the same).
REGIME_SOURCES = {
    "real": [],
    "synthetic": ["synthetic"],
    "mixed": ["synthetic"],
    "real+counterfactual": ["counterfactual"],
}


wildcard_constraints:
    regime="|".join(re.escape(regime) for regime in REGIME_SOURCES),


def classifier_outputs():
    """The end products of the classifier stage for the configured regimes."""
    per_regime = ["metrics.json", "fairness.json", "focus.json"]
    return [
        *expand(f"{CLASSIFIER}/{{regime}}/{{name}}", regime=REGIMES, name=per_regime),
        f"{CLASSIFIER}/comparison.csv",
        f"{CLASSIFIER}/comparison.json",
    ]


def regime_sources(wildcards):
    """The synthetic and/or counterfactual manifests a regime trains on, by name."""
    return {name: CLS["sources"][name] for name in REGIME_SOURCES[wildcards.regime]}


def regime_sources_json(wildcards):
    """regime_sources as JSON for the script's --sources."""
    return as_json(regime_sources(wildcards))


def weights_file():
    """The pretrained weights file as an input (none for random or imagenet weights)."""
    weights = CLS["training"]["weights"]
    return [] if weights in ("random", "imagenet") else [weights]
