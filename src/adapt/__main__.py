"""`python -m adapt` (and `accelerate launch -m adapt`) entry point."""

from adapt.cli import main

if __name__ == "__main__":
    main()
