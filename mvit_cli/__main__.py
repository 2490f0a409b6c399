"""`python -m mvit_cli` (also what `torchrun -m mvit_cli eval DIR` runs)."""

from mvit_cli.cli.main import run

if __name__ == "__main__":
    run()
