"""The prompts stage (config section ``prompts``; rules/prompts.smk): conditioning text per image from labels,
demographics, tabular fields or MEP-LDM morphology clusters. Rules call :mod:`workflow.prompts.stage`."""
