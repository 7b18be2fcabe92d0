"""synthmed: the importable library behind the Snakemake workflow.

One package per stage, named like its config section, its rules file and its script (``prompts`` =
``rules/prompts.smk`` = ``scripts/prompts.py`` = ``workflow/prompts/``); each stage package has a ``stage``
module with one function per rule, named after the rule, and a ``settings`` module with the typed settings of
its config section. ``common`` holds what every stage shares. Packages import only downwards: common <- data
<- prompts <- diffusion <- classifier <- evaluation <- report (tests/test_architecture.py). See
docs/architecture.md.
"""
