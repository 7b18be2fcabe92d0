"""The report stage (config section ``report``; rules/report.smk): the tables and image grids of the study
report that no other stage draws. Rules call :mod:`workflow.report.stage`."""
