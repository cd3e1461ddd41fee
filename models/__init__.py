"""Point-cloud transformer backbones, PEFT methods and the ops they share.

Pure PyTorch; knows nothing about files, SLURM or results.
"""
