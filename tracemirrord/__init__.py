"""tracemirror: mirror AI coding-agent transcripts, redacted, into a bucket the user owns."""

__version__ = "0.1.0"
