"""Counterfactual editing of real images (issue 14)."""
