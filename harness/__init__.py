"""Point-PEFT Bench harness: configs, data, training, SLURM launch, results.

Depends on ``models``; ``models`` never imports from here.
"""
