"""adapt: fine-tune and adapt pretrained Hugging Face transformers to real tasks from one command line."""

__version__ = "0.1.0"
