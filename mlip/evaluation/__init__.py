"""Scoring trained potentials: error metrics and audits (used by ``mlip-eval``)."""
