"""The adapter engine. Never imports UI, IPython or server code."""
