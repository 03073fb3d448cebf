"""Analyses of trained models; each returns a typed result that can be saved."""
