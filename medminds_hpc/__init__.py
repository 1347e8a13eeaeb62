"""medminds: reproduce and beat "Medical Minds Unite" on a Slurm cluster.

Importing this package must stay cheap: the CLI's `--help`, `status` and `report` never load torch.
"""

__version__ = "0.1.0"
