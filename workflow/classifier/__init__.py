"""The classifier stage (config section ``classifier``; rules/classifier.smk): classifiers trained per regime
(real, synthetic, mixed, real + counterfactual), test metrics, subgroup fairness and Grad-CAM focus. Rules call
:mod:`workflow.classifier.stage`."""
