"""`python -m adapt` (and `accelerate launch -m adapt`) entry point."""

from adapt.cli import app

if __name__ == "__main__":
    app()
