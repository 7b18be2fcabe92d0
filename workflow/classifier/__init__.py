"""The classifier stage (config section ``classifier``; rules/classifier.smk): classifiers trained per run
(a regime, real, synthetic, mixed or real + counterfactual, and the source of its extra images), test
metrics, subgroup fairness and Grad-CAM focus. Rules call :mod:`workflow.classifier.stage`."""
