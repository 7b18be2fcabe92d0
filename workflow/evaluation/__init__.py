"""The evaluation stage (config section ``evaluation``; rules/evaluation.smk): image quality of every
generator's samples against real images (FID, KID, precision/recall) with torch-fidelity. Rules call
:mod:`workflow.evaluation.stage`."""
