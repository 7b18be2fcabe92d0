"""The data stage (config sections ``phantom``, ``dataset``, ``split``, ``preprocess``; rules/data.smk):
demo phantoms, dataset adapters, uncertain-label policies, the patient-level split, sharded preprocessing,
3D volumes as slices. The functions behind the rules are in :mod:`workflow.data.stage`."""
