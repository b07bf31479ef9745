"""Experiments: scripts that produce the result pages in experiments/results/.

Run each from the checkout root as `python -m experiments.<name>` (see its
docstring); `experiments.provenance` is what every result records about the
machine, the versions and the command.
"""
