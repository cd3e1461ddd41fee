"""Point-PEFT Bench harness: configs, data, training, SLURM launch, results.

Depends on ``models``; ``models`` never imports from here.

Importing the harness sets ``THP_MEM_ALLOC_ENABLE=1`` in the environment unless it is already set
(``THP_MEM_ALLOC_ENABLE=0`` keeps PyTorch's default). With it PyTorch's CPU allocator asks the
kernel for transparent huge pages (``madvise``) for every block of 2 MiB or more, so a large
tensor's memory faults in 2 MiB at a time instead of 4 KiB: a training step frees and re-allocates
its activations, hundreds of MiB each, and on 4 KiB pages the page faults of one 1 GiB tensor
took 0.26 s. PyTorch reads the variable once, at the process's first CPU allocation: set here, it
reaches every process that imports the harness before allocating a tensor (``run_all.py``, the
bench's measuring processes, SLURM jobs, data-loader workers), and a process that allocated
tensors before importing it keeps 4 KiB pages. On the CPU (bench models cases, batch 32, 2
threads) full fine-tuning trained as fast or up to 1.38x as fast with it (Point-M2AE; 1.29x once
the products ran through oneDNN), Point-PEFT's step time moved within the run-to-run noise, with
the same values; Point-PEFT's peak RSS fell by about a fifth in the first measurements and moved
by -3% to +4% in the later bench (README, "Speed and memory"). Where the kernel's transparent
huge pages are ``never`` it changes nothing.
"""
import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
