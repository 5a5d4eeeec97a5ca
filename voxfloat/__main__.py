"""`python -m voxfloat` runs the command line."""
from voxfloat.cli import main

main()
