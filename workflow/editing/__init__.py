"""The editing stage: counterfactual images of real ones (a finding removed or added, a demographic or tabular
field changed) by the study's fine-tuned generator, their difference maps and how sound they are."""
