"""The GPUs that notebooks 07 and 09 compare estimates against, by the memory ``nvidia-smi`` reports."""

GiB = 2**30

GPUS = {  # memory as nvidia-smi reports it (MiB): a "16 GB" T4 shows 15360 MiB, the others their nominal size
    "T4 16 GB": 15 * GiB,
    "RTX 3090/4090 24 GB": 24 * GiB,
    "A100 40 GB": 40 * GiB,
    "A100 80 GB": 80 * GiB,
}
